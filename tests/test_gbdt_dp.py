"""Local DP on histogram trees: each province clips its rows and noises every histogram it sends,
by what one row can move, and the run's accountant counts every noised release."""

import numpy as np
import pytest

from client.local import LocalWork
from common.data import synthesize_province
from common.models import histnoise
from common.models.histgrow import ROOT, Growing, Query, TreeSettings, TreeStep, sketch_query
from common.models.histparty import Party
from common.provinces import PROVINCES
from server.cli import parse_args
from server.memory import MemoryChannel
from server.privacy.dp import epsilon
from tests import in_memory
from tests.test_federation import ROWS, SEED

SIGMA, CLIP = 2.0, 0.5
DP = ["--privacy", "dp-local", "--dp-clip", str(CLIP), "--dp-noise-multiplier", str(SIGMA)]


class Recorded(LocalWork):
    """A province that keeps every tree question, its exact answer, and what it sent."""

    def __init__(self, raw):
        super().__init__(raw)
        self.questions, self.exact, self.sent = [], [], []

    def train(self, groups, scaler, parameters):
        outcome = super().train(groups, scaler, parameters)
        self.questions.append((groups.need(TreeStep), parameters))
        self.sent.append(outcome.arrays)
        return outcome

    def _train(self, task, scaler):
        outcome = super()._train(task, scaler)
        self.exact.append(outcome.arrays)
        return outcome


def test_every_noised_release_counts_and_each_carries_the_noise_the_accountant_assumes(tmp_path):
    works = {p: Recorded(synthesize_province(p, ROWS, SEED)) for p in PROVINCES}
    flags = ["--model", "rf-hist", "--rounds", "1", "--rfh-trees", "4", "--rfh-max-depth", "4"]
    results = in_memory.run(
        tmp_path, *flags, "--rfh-max-bins", "32", *DP, over=MemoryChannel(works)
    )
    privacy = results["rounds"][0]["privacy"]
    # One release per sketch, and one per tree in each level question (a row sits in a node of
    # every tree): counted from the questions each province was asked.
    questions = works["beijing"].questions
    trees_asked = sum(len(q["grow_index"]) for c, q in questions if c.tree_step == "level")
    assert trees_asked >= 4  # every tree's root at least
    sketches = sum(c.tree_step == "sketch" for c, _ in questions)
    # The evaluation releases each province's clipped MSE, noised, once: one more release.
    # The statistics of clipped rows, noised by each province, one release before all of them.
    counted = {"noised sketches": sketches, "noised tree levels": trees_asked, "noised scores": 1}
    # The time split's rows per year, then per day, noised: two more, before the statistics.
    counted |= {"noised statistics": 1, "noised date counts": 2}
    assert privacy["noisy_releases"] == counted
    assert privacy["clear_releases"] == {}
    assert privacy["epsilon"] == pytest.approx(epsilon(SIGMA / 2, sum(counted.values()), 1e-5))
    assert "noised by the province" in results["disclosure"]["updates"]["server"]
    n_features = works["beijing"].exact[0]["sketch"].shape[0]
    reach = histnoise.reach(n_features, CLIP)
    noise = {name: [] for name in reach}
    for work in works.values():
        assert len(work.sent) == len(work.exact) == len(questions)
        for sent, exact in zip(work.sent, work.exact, strict=True):
            assert set(sent) == set(exact) and set(sent) <= set(reach)
            for name in sent:
                noise[name].append((sent[name] - exact[name]).ravel())
    for name, parts in noise.items():
        drawn = np.concatenate(parts)
        # Tens of thousands of draws: their deviation is σ·reach to within a few percent.
        assert len(drawn) > 20_000
        assert np.std(drawn) == pytest.approx(SIGMA * reach[name], rel=0.05)
        assert abs(np.mean(drawn)) < 0.05 * SIGMA * reach[name]
    assert np.isfinite(results["final"]["mse"])


def test_with_no_noise_and_loose_bounds_local_dp_grows_the_clear_trees(tmp_path):
    flags = ["--model", "gbdt", "--rounds", "1", "--gbdt-trees", "6", "--gbdt-max-depth", "4"]
    clear = in_memory.run(tmp_path / "clear", *flags)
    loose = ["--privacy", "dp-local", "--dp-clip", "1e6", "--dp-noise-multiplier", "0"]
    loose += ["--dp-score-clip", "1e6"]  # the released MSE: clipped per row, here not at all
    noised = in_memory.run(tmp_path / "dp", *flags, *loose)
    # The rows' bounds and the sums' post-processing (empty cells, unused bins) change nothing
    # else: what noise costs is the noise's alone.
    assert noised["final"]["mse"] == pytest.approx(clear["final"]["mse"], rel=1e-9)
    assert noised["rounds"][0]["privacy"]["epsilon"] is None  # σ = 0 bounds nothing


def test_one_row_moves_a_trees_histograms_by_at_most_its_reach():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = rng.normal(size=400) * 5
    y[7] = 1e6  # a residual far beyond the clip
    settings = TreeSettings(trees=3, max_depth=2, max_bins=16, forest=True, reg_lambda=0.0)
    mean, std = x.mean(axis=0), x.std(axis=0)

    def answers(rows):
        party = Party(x[rows], y[rows], settings)
        sketch = party.answer(sketch_query(mean, std))["sketch"]
        edges = [np.quantile(x[:, f], np.linspace(0.1, 0.9, 9)) for f in range(3)]
        level = Query(
            "level",
            edges=edges,
            base_score=0.0,
            grow=[Growing(t, ROOT) for t in range(3)],
            clip=CLIP,
        )
        return sketch, party.answer(level)

    everyone = np.arange(len(y))
    sketch, hist = answers(everyone)
    reach = histnoise.reach(3, CLIP)
    for row in (7, 0, 123):
        fewer_sketch, fewer = answers(np.delete(everyone, row))
        assert np.linalg.norm(sketch - fewer_sketch) <= reach["sketch"] + 1e-9
        for tree in range(3):
            moved = np.sqrt(
                np.sum(((hist["grad"][tree] - fewer["grad"][tree]) / CLIP) ** 2)
                + np.sum((hist["hess"][tree] - fewer["hess"][tree]) ** 2)
            )
            assert moved <= reach["hess"] + 1e-9  # √(2F): the same in units of the clip


def test_local_dp_noises_only_what_it_has_a_row_bound_for():
    answer = {"grad": np.zeros((1, 3, 8)), "hess": np.zeros((1, 3, 8)), "val_sse": np.zeros(())}
    with pytest.raises(ValueError, match="val_sse"):
        histnoise.noised(answer, CLIP, SIGMA, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--dp-epsilon", "1"], "--dp-epsilon cannot calibrate"),
        (["--gbdt-early-stopping", "3"], "--gbdt-early-stopping scores validation rows"),
    ],
)
def test_local_dp_on_trees_refuses_what_it_cannot_account_for(flags, reason, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "gbdt", "--privacy", "dp-local", *flags])
    assert reason in capsys.readouterr().err


class Leaving(LocalWork):
    """A province that answers three tree questions and is gone before the fourth."""

    def __init__(self, raw, province, absent):
        super().__init__(raw)
        self.province, self.absent, self.answered = province, absent, 0

    def train(self, groups, scaler, parameters):
        outcome = super().train(groups, scaler, parameters)
        if groups.tree_step is not None:
            self.answered += 1
            if self.answered == 3:
                self.absent.add(self.province)  # its next task is never answered
        return outcome


def test_under_local_dp_a_province_leaving_mid_ensemble_is_recorded_and_the_rest_grow_on(tmp_path):
    works = {p: LocalWork(synthesize_province(p, ROWS, SEED)) for p in PROVINCES}
    channel = MemoryChannel(works)
    channel.works["beijing"] = Leaving(
        synthesize_province("beijing", ROWS, SEED), "beijing", channel.absent
    )
    flags = ["--model", "gbdt", "--rounds", "1", "--gbdt-trees", "4", "--gbdt-max-depth", "3"]
    results = in_memory.run(tmp_path, *flags, *DP, over=channel)
    record = results["rounds"][0]
    assert [f["province"] for f in record["failures"]] == ["beijing"]
    assert "beijing" not in record["clients"]
    assert [left["province"] for left in record["trees"]["left"]] == ["beijing"]
    assert record["trees"]["count"] == 4
    assert np.isfinite(results["final"]["mse"])
