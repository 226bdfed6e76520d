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
from common.models import forest, leafnoise
from common.provinces import PROVINCES
from server.cli import parse_args
from server.memory import MemoryChannel
from server.privacy.dp import epsilon
from tests import in_memory
from tests.test_federation import FAST

ROWS, TREES, LEAST, CLIP, SIGMA = 20_000, 4, 25, 0.5, 1.0


class Growing(LocalWork):
    """A province's real work, keeping every training task's settings and the outcome that left."""

    def __init__(self, raw) -> None:
        super().__init__(raw)
        self.sent: list = []

    def train(self, groups, scaler, parameters):
        outcome = super().train(groups, scaler, parameters)
        self.sent.append((groups, outcome))
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
    """4 trees, the noised scores, the noised statistics and the time split's two noised day
    counts: 8 releases at σ/2 per unit."""
    _, results = grown
    spent = results["rounds"][-1]["privacy"]
    noisy = {"noised trees": TREES, "noised scores": 1, "noised statistics": 1}
    assert spent["noisy_releases"] == {**noisy, "noised date counts": 2}
    assert spent["clear_releases"] == {"tree shapes": 1}
    expected = epsilon(SIGMA / 2, TREES + 4, spent["delta"])
    assert spent["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert epsilon(SIGMA / 2, 1, spent["delta"]) < spent["epsilon"]  # the trees count
    updates = results["disclosure"]["updates"]["server"]
    assert f"at least {LEAST} rows a leaf" in updates and "not the shapes" in updates


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
