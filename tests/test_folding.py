"""Updates folded into a running sum as they count give the model holding every update gave."""

import math
from dataclasses import replace

import numpy as np
import pytest

from common.models.linear import check_weights
from common.vectors import delta, flatten
from server.channel import as_it_is
from server.folding import BLOCK, CompensatedSum, Folding
from server.rounds import RoundLoop
from server.strategies.federated import FedAdam, Federated
from server.strategy import ClientResult, FedAvg, weighted_average
from tests.in_memory import run

QUICK = ["--model", "lr-sgd", "--rounds", "3", "--round-timeout", "30", "--join-timeout", "5"]


def updates(count: int, size: int, seed: int = 0) -> list[ClientResult]:
    rng = np.random.default_rng(seed)
    return [
        ClientResult(
            f"p{i}",
            int(rng.integers(1, 10_000)),
            {},
            {"coef": rng.normal(size=size), "intercept": np.array(rng.normal())},
        )
        for i in range(count)
    ]


def test_the_sum_does_not_depend_on_the_order_the_updates_arrive_in():
    results, rng = updates(9, 3 * BLOCK + 17), np.random.default_rng(1)
    sums = []
    for _ in range(10):
        total = CompensatedSum(3 * BLOCK + 17)
        for i in rng.permutation(len(results)):
            r = results[i]
            total.add(r.arrays["coef"], r.num_examples)
        sums.append(total.result())
    assert all(np.array_equal(sums[0], s) for s in sums[1:])
    # ... and it is the exactly rounded sum of the weighted values, coordinate by coordinate.
    for i in range(0, 3 * BLOCK + 17, 997):
        exact = math.fsum(r.num_examples * r.arrays["coef"][i] for r in results)
        assert sums[0][i] == exact


def test_fedavg_folded_is_the_weighted_mean_of_the_updates_kept_whole():
    results = updates(9, 1000)
    strategy = FedAvg({}, check_weights)
    folded = [strategy.fold(1, r, None) for r in results]
    assert all(r.arrays == {} for r in folded)
    mean = strategy.aggregate_fit(1, folded, [], None)
    held = weighted_average(results)
    for name in held:
        np.testing.assert_allclose(mean[name], held[name], rtol=1e-12, atol=1e-15)


def test_a_server_optimiser_moves_by_the_folded_mean_step_as_by_the_held_one():
    results, current = updates(9, 1000), updates(1, 1000, seed=5)[0].arrays
    held, folding = (FedAdam(FedAvg({}, check_weights), lr=0.05) for _ in range(2))
    for server_round in (1, 2):  # the second round moves with the moments of the first
        expected = held.aggregate_fit(server_round, results, [], current)
        folded = [folding.fold(server_round, r, current) for r in results]
        got = folding.aggregate_fit(server_round, folded, [], current)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(folding.second, held.second, rtol=1e-12, atol=1e-300)


def test_the_mean_made_in_place_of_the_sum_has_the_bits_of_one_made_beside_it():
    results, current = updates(9, 3 * BLOCK + 17), updates(1, 3 * BLOCK + 17, seed=5)[0].arrays
    folding = Folding()
    for r in results:
        folding.add(1, r.province, r.arrays, r.num_examples, current)
    fold = folding.take(1, [replace(r, arrays={}) for r in results])
    beside = flatten(current) + (fold.total.high + fold.total.low) / fold.weight
    mean = fold.mean()
    assert np.array_equal(flatten(mean), beside)
    assert {n: a.shape for n, a in mean.items()} == {n: a.shape for n, a in current.items()}
    with pytest.raises(ValueError, match="rounded once already"):  # a fold is averaged once
        fold.mean()


def test_robust_rules_keep_every_update_whole():
    from server.strategies.robust import median

    strategy = Federated(FedAvg({}, check_weights), combine=median)
    result = updates(1, 10)[0]
    assert strategy.fold(1, result, None) is result


def test_a_fold_of_other_updates_than_the_rounds_is_refused_not_averaged():
    folding, results = Folding(), updates(3, 10)
    for r in results[:2]:
        folding.add(1, r.province, r.arrays, r.num_examples, None)
    with pytest.raises(RuntimeError, match="fold holds"):
        folding.take(1, [ClientResult(r.province, r.num_examples, {}) for r in results])


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--strategy", "fedprox"],
        ["--strategy", "fedavgm"],
        ["--strategy", "fedadam"],
        ["--compression", "topk"],
        ["--mode", "async", "--buffer-size", "3"],
    ],
    ids=["fedavg", "fedprox", "fedavgm", "fedadam", "topk", "async"],
)
def test_a_folded_run_ends_with_the_model_of_a_run_that_holds_every_update(
    tmp_path, monkeypatch, flags
):
    added = []
    with monkeypatch.context() as patch:
        fold = Folding.add
        patch.setattr(Folding, "add", lambda self, *a: added.append(a[1]) or fold(self, *a))
        folded = run(tmp_path / "folded", *QUICK, *flags)
    assert len(added) >= 9  # the folded run did fold its updates
    with monkeypatch.context() as patch:
        patch.setattr(RoundLoop, "keep_update", lambda self, server_round: as_it_is)
        held = run(tmp_path / "held", *QUICK, *flags)
    a = np.load(tmp_path / "folded" / "model.npz")
    b = np.load(tmp_path / "held" / "model.npz")
    assert a.files == b.files
    for name in a.files:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-12)
    assert folded["final"]["mse"] == pytest.approx(held["final"]["mse"], rel=1e-9)


def test_local_dp_folds_its_noised_updates():
    from server.privacy.dp import DPFedAvg, DPSettings

    results = updates(9, 100)
    local = DPFedAvg(FedAvg({}, check_weights), DPSettings("dp-local", 1.0, 1.0, 1e-5))
    folded = [local.fold(1, r, None) for r in results]
    mean, held = local.aggregate_fit(1, folded, [], None), weighted_average(results)
    for name in held:
        np.testing.assert_allclose(mean[name], held[name], rtol=1e-12, atol=1e-15)


def test_central_dp_folds_each_step_clipped_as_the_held_path_clips_it():
    from server.privacy.dp import DPFedAvg, DPSettings

    results, current = updates(9, 1000), updates(1, 1000, seed=5)[0].arrays
    # Every step is far longer than the bound of 1, so every one is clipped.
    assert all(np.linalg.norm(delta(r.arrays, current)) > 10 for r in results)

    def central() -> DPFedAvg:
        settings = DPSettings("dp-central", 1.0, 1.0, 1e-5)
        return DPFedAvg(FedAvg({}, check_weights), settings, rng=np.random.default_rng(3))

    folding, holding = central(), central()
    folded = [folding.fold(1, r, current) for r in results]
    assert all(r.arrays == {} for r in folded)
    mean = folding.aggregate_fit(1, folded, [], current)
    held = holding.aggregate_fit(1, results, [], current)
    for name in held:
        np.testing.assert_allclose(mean[name], held[name], rtol=1e-12, atol=1e-15)
