"""Every run reports, phase by phase, what the server and the provinces learned.

In process over the in-memory channel: the real server run and the provinces' real work.
"""

import math

import numpy as np

from common import forecast
from common.data import synthesize_province
from common.provinces import PROVINCES
from proto.fedstock.v1 import federation_pb2 as pb
from server.disclosure import PHASES, by_rounds, table
from server.memory import MemoryChannel
from server.privacy.secagg import HIDDEN
from server.summary import format_summary
from tests.in_memory import ROWS, SEED, Scoring, provinces, run, scores_hidden

QUICK = ["--model", "lr", "--rounds", "2", "--round-timeout", "30", "--join-timeout", "5"]


def test_a_plain_run_says_the_server_saw_each_provinces_statistics_and_updates(tmp_path):
    disclosure = run(tmp_path, *QUICK)["disclosure"]
    assert tuple(disclosure) == (*PHASES, "rounds")
    assert "in the clear" in disclosure["statistics"]["server"]
    assert "each province's update, in the clear" in disclosure["updates"]["server"]


def test_under_secagg_statistics_updates_and_scores_are_sums_and_the_run_is_the_same(tmp_path):
    plain = run(tmp_path / "plain", *QUICK)
    masked = run(tmp_path / "secagg", *QUICK, "--privacy", "secagg")
    disclosure = masked["disclosure"]
    for phase in ("statistics", "updates", "metrics"):
        assert "securely aggregated" in disclosure[phase]["server"]
        assert "in the clear" not in disclosure[phase]["server"].split(";")[0]
    # The federation's statistics, summed under the masks, are those of the plain run.
    for name in ("mean", "std"):
        np.testing.assert_allclose(masked["statistics"][name], plain["statistics"][name], rtol=1e-9)
    assert masked["statistics"]["rows"] == plain["statistics"]["rows"]
    # ... and so is the date cutoff, agreed from the provinces' masked counts of rows per day
    assert masked["split"] == plain["split"] and masked["split"]["kind"] == "time"
    assert "securely aggregated" in disclosure["dates"]["server"]
    assert np.isclose(masked["final"]["mse"], plain["final"]["mse"], rtol=1e-6)
    summary = format_summary(masked)
    assert "who learns what" in summary and disclosure["statistics"]["server"] in summary


def test_under_secagg_no_provinces_score_leaves_it_and_the_federations_scores_are_exact(tmp_path):
    plain = run(tmp_path / "plain", *QUICK)
    works = {p: Scoring(synthesize_province(p, ROWS, SEED)) for p in PROVINCES}
    masked = run(tmp_path / "secagg", *QUICK, "--privacy", "secagg", over=MemoryChannel(works))
    # What each province sent the server of its scores: masked ring elements and its time.
    for work in works.values():
        assert len(work.sent) == 2  # one evaluation a round
        for outcome in work.sent:
            assert set(outcome.metrics) == {"seconds"}
            assert set(outcome.arrays) == {forecast.SUMS, forecast.ROWS}
            assert all(a.dtype == np.int64 for a in outcome.arrays.values())
    # The server learns the federation's scores, the same as in the clear, and no province's.
    scores_hidden(masked, plain, HIDDEN)
    table = format_summary(masked)
    assert "hidden" in table and f"{plain['final']['per_client']['hubei']['mse']:.6g}" not in table


# Round by round: what each round's updates let out, from the schedule that gathered them.


def test_identical_consecutive_rounds_are_one_row_and_a_change_starts_another():
    said = [{"server": "a", "provinces": "p"}, {"server": "b", "provinces": "p"}]
    records = [{"round": r, "disclosure": said[r == 3]} for r in (1, 2, 3, 4)]
    groups = by_rounds(records)
    assert [(g["first_round"], g["last_round"], g["server"]) for g in groups] == [
        (1, 2, "a"),
        (3, 3, "b"),
        (4, 4, "a"),
    ]
    lines = table({"updates": {"server": "x", "provinces": "y"}, "rounds": groups})
    assert sum("rounds 1–2: server: a" in line for line in lines) == 1
    assert sum(line.strip().startswith("round ") for line in lines) == 2


def test_a_plain_runs_rounds_are_one_row_saying_each_update_was_in_the_clear(tmp_path):
    results = run(tmp_path, *QUICK[:3], "3", *QUICK[4:])
    assert all("disclosure" in r for r in results["rounds"])
    (group,) = results["disclosure"]["rounds"]
    assert (group["first_round"], group["last_round"]) == (1, 3)
    assert group["server"] == "each province's update, in the clear; from 9 of 9 provinces asked"
    assert "rounds 1–3: server: each province's update, in the clear" in format_summary(results)


def test_a_secagg_round_that_lost_a_province_says_whom_and_that_its_masks_were_recovered(
    tmp_path,
):
    """hubei answers its keys and shares in round 2, never its training task. lr-sgd, whose
    updates change with the model: lr's are the same every round, and the survivors refuse to
    unmask a sum that, differenced with round 1's, gives hubei's (client/secagg.py)."""

    def seconds(province, task):
        lost = province == "hubei" and task.round == 2 and task.kind == pb.TASK_KIND_TRAIN
        return math.inf if lost else 1.0

    flags = ["--model", "lr-sgd", "--rounds", "3", *QUICK[4:], "--min-clients", "7"]
    flags += ["--privacy", "secagg"]
    channel = MemoryChannel(provinces(), seconds)
    results = run(tmp_path, *flags, over=channel)
    assert [r["clients"] for r in results["rounds"]][1] == sorted(set(PROVINCES) - {"hubei"})
    first, lost, last = results["disclosure"]["rounds"]
    assert [(g["first_round"], g["last_round"]) for g in (first, lost, last)] == [
        (1, 1),
        (2, 2),
        (3, 3),
    ]
    assert first["server"] == last["server"]
    assert first["server"].startswith("the sample-weighted sum over 9 of 9 provinces asked")
    assert lost["server"].startswith("the sample-weighted sum over 8 of 9 provinces asked")
    assert lost["server"].endswith("hubei dropped after sharing keys, its masks recovered")
    assert "in the clear" not in lost["server"]
    assert "round 2: server: the sample-weighted sum over 8" in format_summary(results)


def test_a_dp_central_runs_rounds_say_the_noise_and_the_epsilon_spent_to_each(tmp_path):
    flags = ["--model", "lr-sgd", "--rounds", "3", "--privacy", "dp-central"]
    results = run(tmp_path, *flags, "--dp-noise-multiplier", "1")
    spent = [r["privacy"]["epsilon"] for r in results["rounds"]]
    assert [r["disclosure"]["epsilon"] for r in results["rounds"]] == spent
    assert spent[0] < spent[1] < spent[2]
    (group,) = results["disclosure"]["rounds"]
    assert group["epsilon"] == [spent[0], spent[2]]
    assert "it clips them and noises the sum (Gaussian noise σ = 1·C" in group["server"]
    assert group["server"].endswith("from 9 of 9 provinces asked")
    assert f"rounds 1–3 (ε {spent[0]:.3g} to {spent[2]:.3g})" in format_summary(results)
