"""Forests (`rf`) under local DP, the floor for a union of local trees: every leaf holds at least
the floor's rows, its value is the mean of its rows' clipped targets plus noise of the stated
spread, every tree counts in ε, and the modes that cannot protect a tree (secagg, he,
dp-central) are refused with rf-hist named as the alternative."""

import numpy as np
import pytest

from client.local import LocalWork
from client.trainers import forest_base
from common.data import synthesize_province
from common.launch import LocalFederation
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


def test_every_leaf_holds_at_least_the_floors_rows_and_says_so(grown):
    works, _ = grown
    for work in works.values():
        trees, x, _ = sent_trees(work)
        assert len(trees) == TREES
        for tree in trees:
            leaf = forest.leaves(tree, x.astype(np.float32))
            counts = np.bincount(leaf, minlength=len(tree["value"]))
            is_leaf = tree["children_left"] == forest.LEAF
            assert counts[is_leaf].min() >= LEAST  # every training row counted, each once
            np.testing.assert_array_equal(tree["n_node_samples"][is_leaf], counts[is_leaf])
            assert not tree["value"][~is_leaf].any()  # inner nodes say nothing of their rows


def test_leaf_values_are_clipped_means_plus_the_stated_noise(grown):
    """Over every leaf of every province's trees, the value sent minus the mean of its rows'
    clipped targets (computed here from the rows) has mean 0 and the stated spread."""
    works, _ = grown
    deviations = []
    for work in works.values():
        trees, x, target = sent_trees(work)
        for tree in trees:
            leaf = forest.leaves(tree, x.astype(np.float32))
            is_leaf = np.flatnonzero(tree["children_left"] == forest.LEAF)
            counts = np.bincount(leaf, minlength=len(tree["value"]))[is_leaf]
            means = np.bincount(leaf, weights=target, minlength=len(tree["value"]))[is_leaf]
            deviations.append(tree["value"][is_leaf] - means / counts)
    deviations = np.concatenate(deviations)
    stated = leafnoise.leaf_noise(CLIP, LEAST, SIGMA)
    assert len(deviations) > 1_000
    assert abs(deviations.std() / stated - 1) < 0.1
    assert abs(deviations.mean()) < 5 * stated / np.sqrt(len(deviations))


def test_every_tree_is_a_release_and_the_shapes_are_listed_as_clear(grown):
    """4 trees, the sketch that places the bins, the noised scores, the noised statistics and
    the time split's two noised day counts: 9 releases at σ/2 per unit."""
    _, results = grown
    spent = results["rounds"][-1]["privacy"]
    noisy = {"noised trees": TREES, "noised scores": 1, "noised statistics": 1}
    noisy |= {"noised sketches": 1, "noised date counts": 2}
    assert spent["noisy_releases"] == noisy
    assert spent["clear_releases"] == {"tree shapes": 1}
    expected = epsilon(SIGMA / 2, TREES + 5, spent["delta"])
    assert spent["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert epsilon(SIGMA / 2, 1, spent["delta"]) < spent["epsilon"]  # the trees count
    updates = results["disclosure"]["updates"]["server"]
    assert f"at least {LEAST} rows a leaf" in updates and "not the shapes" in updates


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
    are refused; the same rows grown on the shared edges pass."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 3)), rng.normal(size=400)
    strategy = privacy.wrap(
        build_strategy("rf", {}), parse_args(["--model", "rf", *FLAGS]).privacy, 1
    )
    assert isinstance(strategy, DPForest)
    strategy.edges = [np.linspace(-2, 2, 9) for _ in range(3)]
    params = {"n_estimators": 2, "random_state": 0, "min_samples_leaf": LEAST}
    on_edges = forest.fit_forest(x, y, edges=strategy.edges, **params)
    strategy.accept_fit(1, ClientResult("hubei", 400, {}, forest.forest_to_arrays(on_edges)))
    own = forest.forest_to_arrays(forest.fit_forest(x, y, **params))
    with pytest.raises(UpdateError, match="off the shared bins"):
        strategy.accept_fit(1, ClientResult("hubei", 400, {}, own))


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
def test_a_federation_of_processes_grows_rf_under_the_floor(tmp_path):
    """Real server and client processes over localhost: the run ends, every leaf of the global
    forest it wrote holds at least the floor's rows, and every tree is counted in ε."""
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
        assert tree["n_node_samples"][tree["children_left"] == forest.LEAF].min() >= LEAST
    spent = results["rounds"][-1]["privacy"]
    assert spent["noisy_releases"]["noised trees"] == 2
    assert "tree shapes" in spent["clear_releases"] and np.isfinite(spent["epsilon"])
