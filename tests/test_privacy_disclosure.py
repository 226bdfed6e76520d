"""Every run reports, phase by phase, what the server and the provinces learned.

In process over the in-memory channel: the real server run and the provinces' real work.
"""

import numpy as np

from common import forecast
from common.data import synthesize_province
from common.provinces import PROVINCES
from server.disclosure import PHASES
from server.memory import MemoryChannel
from server.privacy.secagg import HIDDEN
from server.summary import format_summary
from tests.in_memory import ROWS, SEED, Scoring, run, scores_hidden

QUICK = ["--model", "lr", "--rounds", "2", "--round-timeout", "30", "--join-timeout", "5"]


def test_a_plain_run_says_the_server_saw_each_provinces_statistics_and_updates(tmp_path):
    disclosure = run(tmp_path, *QUICK)["disclosure"]
    assert tuple(disclosure) == PHASES
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
