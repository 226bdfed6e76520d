"""Every run reports, phase by phase, what the server and the provinces learned.

In process over the in-memory channel: the real server run and the provinces' real work.
"""

import numpy as np

from server.disclosure import PHASES
from server.summary import format_summary
from tests.in_memory import run

QUICK = ["--model", "lr", "--rounds", "2", "--round-timeout", "30", "--join-timeout", "5"]


def test_a_plain_run_says_the_server_saw_each_provinces_statistics_and_updates(tmp_path):
    disclosure = run(tmp_path, *QUICK)["disclosure"]
    assert tuple(disclosure) == PHASES
    assert "in the clear" in disclosure["statistics"]["server"]
    assert "each province's update, in the clear" in disclosure["updates"]["server"]


def test_under_secagg_the_statistics_and_updates_are_sums_and_the_run_is_the_same(tmp_path):
    plain = run(tmp_path / "plain", *QUICK)
    masked = run(tmp_path / "secagg", *QUICK, "--privacy", "secagg")
    disclosure = masked["disclosure"]
    for phase in ("statistics", "updates"):
        assert "securely aggregated" in disclosure[phase]["server"]
        assert "in the clear" not in disclosure[phase]["server"].split(";")[0]
    assert "in the clear" in disclosure["metrics"]["server"]  # metrics are not protected yet
    # The federation's statistics, summed under the masks, are those of the plain run.
    for name in ("mean", "std"):
        np.testing.assert_allclose(masked["statistics"][name], plain["statistics"][name], rtol=1e-9)
    assert masked["statistics"]["rows"] == plain["statistics"]["rows"]
    assert np.isclose(masked["final"]["mse"], plain["final"]["mse"], rtol=1e-6)
    summary = format_summary(masked)
    assert "who learns what" in summary and disclosure["statistics"]["server"] in summary
