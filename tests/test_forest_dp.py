"""Forests (`rf`) under local DP, the floor for a union of local trees: every tree's shape is
drawn from the seed alone (the same for any rows), its leaves' counts and sums noised as stated,
every tree counts in ε and nothing leaves unnoised, and the modes that cannot protect a tree
(secagg, he, dp-central) are refused with rf-hist named as the alternative."""

import numpy as np
import pytest

from client.local import LocalWork
from client.trainers import fit_forest, forest_base
from common.data import synthesize_province
from common.launch import LocalFederation
from common.model_settings import DRAWN_DEPTH, ForestSettings
from common.models import forest, histnoise, histtree, leafnoise
from common.models.checks import UpdateError
from common.provinces import PROVINCES
from server import privacy
from server.cli import parse_args
from server.memory import MemoryChannel
from server.models import build_strategy
from server.privacy.dp import epsilon
from server.privacy.dp_forest import DPForest
from server.strategy import ClientResult
from tests import in_memory
from tests.test_federation import FAST

ROWS, TREES, LEAST, CLIP, SIGMA = 20_000, 4, 25, 0.5, 1.0
FLAGS = ["--privacy", "dp-local", "--rf-min-samples-leaf", str(LEAST), "--dp-noise-multiplier", "1"]


class Growing(LocalWork):
    """A province's real work, keeping every training task's settings and the outcome that left
    (the sketch that places the bins apart, with the question it answered), and the edges its
    trees were to split at."""

    def __init__(self, raw) -> None:
        super().__init__(raw)
        self.sent: list = []
        self.sketches: list = []
        self.edges: list = []

    def train(self, groups, scaler, parameters):
        outcome = super().train(groups, scaler, parameters)
        if groups.tree_step is not None:
            self.sketches.append((groups, parameters, outcome))
        else:
            self.sent.append((groups, outcome))
            self.edges.append(parameters)
        return outcome


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """One round of the server's own run in memory, rf under dp-local; what each province sent."""
    works = {p: Growing(synthesize_province(p, ROWS, in_memory.SEED)) for p in PROVINCES}
    flags = ["--model", "rf", "--rounds", "1", "--privacy", "dp-local"]
    flags += ["--rf-n-estimators", str(TREES), "--rf-global-trees", str(TREES * len(PROVINCES))]
    flags += ["--rf-min-samples-leaf", str(LEAST), "--dp-clip", str(CLIP)]
    flags += ["--dp-noise-multiplier", str(SIGMA)]
    results = in_memory.run(tmp_path_factory.mktemp("rf"), *flags, over=MemoryChannel(works))
    return works, results


def sent_trees(work: Growing):
    """Each tree the province sent, with the training rows and their clipped targets."""
    ((groups, outcome),) = work.sent
    data = work.split(groups)
    x = data.x_train
    target = np.clip(data.y_train - forest_base(x, groups), -CLIP, CLIP)
    trees = forest.forest_from_arrays(outcome.arrays, x.shape[1])
    return trees, x, target


SHAPE = ("children_left", "children_right", "feature", "threshold")


def test_a_trees_shape_is_drawn_from_the_seed_alone_whatever_the_rows(grown):
    """A province's task grown again on another province's rows: the same shapes (so they read
    no row), on the shared edges, with other counts; the tree's leaves reach every node."""
    works, _ = grown
    hubei, beijing = works["hubei"], works["beijing"]
    ((groups, outcome),) = hubei.sent
    (shared,) = hubei.edges
    other = beijing.split(beijing.sent[0][0])
    assert len(other.y_train) != len(hubei.split(groups).y_train)
    # Filled, not yet noised: an empty leaf's count is 0 until the noise, so unchecked here.
    filled = fit_forest(other.x_train, other.y_train, shared, groups)
    regrown = forest.TREES.take(filled, len(filled) // len(forest.TREES.fields))
    sent = forest.forest_from_arrays(outcome.arrays, other.x_train.shape[1])
    assert len(regrown) == len(sent) == TREES
    for mine, theirs in zip(sent, regrown, strict=True):
        for field in SHAPE:
            np.testing.assert_array_equal(mine[field], theirs[field])
        assert not np.array_equal(mine["n_node_samples"], theirs["n_node_samples"])
        assert (mine["children_left"] != forest.LEAF).sum() > 100  # a deep tree, not a stump
    # Another seed draws other shapes.
    (beijing_outcome,) = [o for _, o in beijing.sent]
    theirs = forest.forest_from_arrays(beijing_outcome.arrays, other.x_train.shape[1])
    assert not np.array_equal(sent[0]["feature"], theirs[0]["feature"])


def test_a_drawn_tree_splits_only_inside_its_nodes_range_and_reads_no_row():
    edges = [np.linspace(-1.0, 1.0, 9), np.array([0.0, 5.0])]
    tree = forest.drawn_tree(edges, 4, np.random.default_rng(7))
    again = forest.drawn_tree(edges, 4, np.random.default_rng(7))
    assert all(np.array_equal(tree[f], again[f]) for f in SHAPE)
    left, right = tree["children_left"], tree["children_right"]

    def walk(node, lo, hi, depth):
        if left[node] == forest.LEAF:
            inside = [((e > lo[f]) & (e < hi[f])).any() for f, e in enumerate(edges)]
            assert depth == 4 or not any(inside)
            return
        f, t = tree["feature"][node], tree["threshold"][node]
        assert t in edges[f] and lo[f] < t < hi[f]
        walk(left[node], lo, {**hi, f: t}, depth + 1)
        walk(right[node], {**lo, f: t}, hi, depth + 1)

    walk(0, dict.fromkeys(range(2), -np.inf), dict.fromkeys(range(2), np.inf), 0)


def test_each_leafs_count_and_sum_are_noised_at_sigma_and_sigma_c():
    """Replacing a row moves (sums/C, counts) by 2 at most: noise σ on each is σ/2 a unit."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2_000, 2))
    edges = [np.linspace(-2.0, 2.0, 17)] * 2
    tree = leafnoise.refit(forest.drawn_tree(edges, 5, rng), x, np.clip(x[:, 0], -CLIP, CLIP))
    leaf = tree["children_left"] == forest.LEAF
    counts = tree["n_node_samples"][leaf].astype(float)
    sums = tree["value"][leaf] * counts
    noised = leafnoise.noised(tree, CLIP, SIGMA, LEAST, np.random.default_rng(4))
    draws = np.random.default_rng(4)
    noisy_sums = sums + draws.normal(0.0, SIGMA * CLIP, int(leaf.sum()))
    noisy_counts = counts + draws.normal(0.0, SIGMA, int(leaf.sum()))
    expected = np.clip(noisy_sums / np.maximum(noisy_counts, LEAST), -CLIP, CLIP)
    np.testing.assert_allclose(noised["value"][leaf], expected)
    np.testing.assert_array_equal(
        noised["n_node_samples"][leaf], np.maximum(np.rint(noisy_counts), 1)
    )
    assert not noised["value"][~leaf].any()
    forest.check_tree(noised, 2, "a noised tree")  # counts positive and adding up


def test_a_sketch_question_of_the_wrong_shape_is_refused_before_any_row_is_read(grown):
    """The province answers the sketch question it was sent, and refuses one whose mean or
    deviation is not one value per feature, or is missing, as a bad question."""
    works, _ = grown
    hubei = works["hubei"]
    ((groups, question, outcome),) = hubei.sketches
    x = hubei.split(groups).x_train
    y = np.zeros(len(x))
    answer = fit_forest(x, y, question, groups)
    assert answer["sketch"].shape == outcome.arrays["sketch"].shape
    short = {"mean": question["mean"][:-1], "std": question["std"]}
    with pytest.raises(UpdateError, match="'mean' has shape"):
        fit_forest(x, y, short, groups)
    with pytest.raises(UpdateError, match=r"missing \['std'\]"):
        fit_forest(x, y, {"mean": question["mean"]}, groups)


def test_the_depth_the_server_discloses_is_the_depth_the_provinces_drew_to(grown):
    """--rf-max-depth is unlimited here: the provinces draw to ForestSettings.drawn_depth, and
    the disclosure names that depth, from the same setting."""
    works, results = grown
    ((groups, _),) = works["hubei"].sent
    depth = groups.need(ForestSettings).drawn_depth
    assert depth == DRAWN_DEPTH
    trees, _, _ = sent_trees(works["hubei"])
    for tree in trees:
        level = np.zeros(len(tree["children_left"]), dtype=int)
        for node in np.flatnonzero(tree["children_left"] != forest.LEAF):  # parents first
            level[[tree["children_left"][node], tree["children_right"][node]]] = level[node] + 1
        assert level.max() == depth
    assert f"depth {depth})" in results["disclosure"]["updates"]["server"]


def test_every_tree_is_a_release_and_nothing_leaves_unnoised(grown):
    """4 trees, the sketch that places the bins, the noised scores, the noised statistics and
    the time split's two noised day counts: 9 releases at σ/2 per unit."""
    _, results = grown
    spent = results["rounds"][-1]["privacy"]
    noisy = {"noised trees": TREES, "noised scores": 1, "noised statistics": 1}
    noisy |= {"noised sketches": 1, "noised date counts": 2}
    assert spent["noisy_releases"] == noisy
    assert spent["clear_releases"] == {} and "note" not in spent
    expected = epsilon(SIGMA / 2, TREES + 5, spent["delta"])
    assert spent["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert epsilon(SIGMA / 2, 1, spent["delta"]) < spent["epsilon"]  # the trees count
    updates = results["disclosure"]["updates"]["server"]
    assert "drawn from the province's seed alone" in updates
    assert f"count at least {LEAST}" in updates and "ε covers the whole tree" in updates


def test_every_threshold_of_a_federated_rf_is_one_of_the_runs_shared_edges(grown):
    """The edges every province split at are one set for the run, placed from the noised
    sketches the provinces sent around the noised statistics' mean and deviation: a function
    of protected releases alone, and every threshold of every tree sent is one of them."""
    works, results = grown
    packed = [edges for work in works.values() for edges in work.edges]
    assert all(set(p) == {"edges", "edge_counts"} for p in packed)
    assert all(np.array_equal(p["edges"], packed[0]["edges"]) for p in packed)
    n_features = len(packed[0]["edge_counts"])
    edges = histtree.unpack_edges(packed[0], n_features, 256)
    # The sketch's question is the federation's noised statistics; each answer left noised.
    mean, std = results["statistics"]["mean"][:-1], results["statistics"]["std"][:-1]
    answers = []
    for work in works.values():
        ((groups, question, outcome),) = work.sketches
        np.testing.assert_allclose(question["mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(question["std"], std, rtol=1e-12)
        clear = histtree.sketch(work.split(groups).x_train, question["mean"], question["std"])
        assert (outcome.arrays["sketch"] != clear).mean() > 0.99  # noise on (nearly) every cell
        answers.append(outcome.arrays["sketch"])
    counts = histnoise.denoised_sketch(sum(answers), SIGMA, len(answers))
    placed = histtree.edges_from_sketch(counts, np.array(mean), np.array(std), 256)
    assert all(np.array_equal(a, b) for a, b in zip(placed, edges, strict=True))
    thresholds = 0
    for work in works.values():
        trees, _, _ = sent_trees(work)
        for tree in trees:
            split = tree["children_left"] != forest.LEAF
            for f, t in zip(tree["feature"][split], tree["threshold"][split], strict=True):
                assert t in edges[f]
                thresholds += 1
    assert thresholds > 100


def test_the_server_refuses_a_tree_split_off_the_shared_edges():
    """A province's trees grown on its own values (thresholds that are midpoints of two rows)
    are refused; trees drawn on the shared edges and filled from the same rows pass."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 3)), rng.normal(size=400)
    strategy = privacy.wrap(
        build_strategy("rf", {}), parse_args(["--model", "rf", *FLAGS]).privacy, 1
    )
    assert isinstance(strategy, DPForest)
    strategy.edges = [np.linspace(-2, 2, 9) for _ in range(3)]
    params = {"n_estimators": 2, "random_state": 0, "min_samples_leaf": LEAST}
    drawn = np.random.default_rng(0)
    # As a province sends them: drawn on the edges, filled from the rows, noised.
    filled = [leafnoise.refit(forest.drawn_tree(strategy.edges, 4, drawn), x, y) for _ in range(2)]
    on_edges = [leafnoise.noised(tree, CLIP, SIGMA, 1, drawn) for tree in filled]
    sent = forest.forest_to_arrays(on_edges)
    strategy.check_update(sent, 3)
    strategy.accept_fit(1, ClientResult("hubei", 400, {}, sent))
    own = forest.forest_from_arrays(forest.forest_to_arrays(forest.fit_forest(x, y, **params)), 3)
    # The first split off the edges in the tree's own order is the one named.
    split = own[0]["children_left"] != forest.LEAF
    f, t = own[0]["feature"][split][0], own[0]["threshold"][split][0]
    with pytest.raises(UpdateError, match=f"splits feature {f} at {t:g}, off the shared bins"):
        strategy.check_update(forest.forest_to_arrays(own), 3)
    with pytest.raises(UpdateError, match="splits on a feature outside"):
        strategy.check_update(sent, 2)  # decoded as the union decodes it


@pytest.mark.parametrize("floor", [[], ["--rf-min-samples-leaf", str(LEAST)]])
@pytest.mark.parametrize("mode", ["secagg", "he", "dp-central"])
def test_a_mode_that_cannot_protect_a_tree_refuses_rf_and_names_rf_hist(mode, floor, capsys):
    """The server receives a province's trees whole under these modes, floor or not: the run is
    refused before anything starts, and the alternative it names takes the mode asked for or
    dp-local."""
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--model", "rf", "--privacy", mode, *floor])
    assert stopped.value.code == 2
    said = capsys.readouterr().err
    assert f"--privacy {mode} cannot protect rf's trees" in said
    assert "--model rf-hist grows its trees from summed histograms" in said
    for named in ("secagg", "dp-local"):
        assert parse_args(["--model", "rf-hist", "--privacy", named]).privacy.privacy == named


@pytest.mark.integration
def test_a_federation_of_processes_grows_rf_of_drawn_trees(tmp_path):
    """Real server and client processes over localhost: the run ends, the global forest it
    wrote is well formed with leaves inside ±C, and every tree is counted in ε, nothing apart."""
    flags = ["--privacy", "dp-local", "--rf-n-estimators", "2", "--rf-global-trees", "18"]
    flags += ["--rf-min-samples-leaf", str(LEAST), "--dp-clip", str(CLIP)]
    flags += ["--dp-noise-multiplier", str(SIGMA)]
    federation = LocalFederation(tmp_path, "rf", 1, 20_000, 3, server_args=[*FAST, *flags])
    federation.start()
    codes = federation.wait(timeout=600)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    results = federation.results()
    with np.load(tmp_path / results["final"]["model_file"]) as stored:
        arrays = dict(stored)
    trees = forest.TREES.take(arrays, len(arrays) // len(forest.TREES.fields))
    assert len(trees) >= len(PROVINCES)  # a province's share of the 18, at least one each
    for tree in trees:
        assert (tree["n_node_samples"] >= 1).all() and np.abs(tree["value"]).max() <= CLIP
    spent = results["rounds"][-1]["privacy"]
    assert spent["noisy_releases"]["noised trees"] == 2
    assert spent["clear_releases"] == {} and np.isfinite(spent["epsilon"])
