"""`lr` under secure aggregation loses a province in round 2, over real processes.

`lr`'s update is the same in every round, so a second sum over fewer provinces would give the
lost one's update by differencing: the survivors refuse to unmask it and go on, and the
round's record and log line say that sum was not aggregated, rather than that the round made
a model and scored it. The province dies (SIGKILL) on receiving a chosen task of round 2, so
the loss lands at the same step of the protocol however the machine schedules the processes;
the round timeout is far beyond the test's own limit, so a phase that waited for the dead
province until its deadline would fail the test by its timeout.
"""

import signal

import pytest

from common.launch import LocalFederation
from common.provinces import PROVINCES
from tests.test_federation import ROWS, SEED
from tests.test_gbdt_dropout import KILL_TEST_WAITS

pytestmark = pytest.mark.integration
KILLED = "hubei"
# Round 2's tasks for a province, in order: the training sum's keys, shares, the training, the
# survivors' confirmation, the reveal; then the same five for the scores.
KEYS, CONFIRM = "secagg_keys:1", "secagg_unmask:1"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("vanish_at", [KEYS, CONFIRM], ids=["before-training", "after-training"])
def test_lr_under_secagg_that_loses_a_province_in_round_two_is_not_differenced(tmp_path, vanish_at):
    federation = LocalFederation(
        tmp_path,
        "lr",
        2,
        ROWS,
        SEED,
        provinces=tuple(p for p in PROVINCES if p != KILLED),
        server_args=[
            "--privacy",
            "secagg",
            *KILL_TEST_WAITS,
            # All nine start the run and round 1; round 2 goes on with the eight left.
            "--min-available",
            "9",
            "--min-clients",
            "8",
        ],
        insecure=True,
    )
    federation.start()
    federation.start_client(
        KILLED, "--vanish-at", f"2:{vanish_at}", module="tests.vanishing_client"
    )
    codes = federation.wait(timeout=840)
    # The survivors refuse the sum and go on: they hear the server's stop and exit 0.
    assert codes == {p: -signal.SIGKILL if p == KILLED else 0 for p in codes}, codes

    survivors = sorted(set(PROVINCES) - {KILLED})
    refusal = "had unmasked before over"
    assert all(refusal in (tmp_path / f"{p}.log").read_text() for p in survivors)

    first, second = federation.results()["rounds"]
    assert first.get("aggregated", True) and first["mse"] is not None
    assert first["clients"] == sorted(PROVINCES)
    log = (tmp_path / "server.log").read_text()
    if vanish_at == KEYS:  # the training sum over the eight is refused: the model stays
        assert second["aggregated"] is False
        assert "(not aggregated: model unchanged)" in log
    else:  # the training sum over the nine is unmasked; the scores over the eight are refused
        assert second.get("aggregated", True)
        assert second["evaluated"] is False and second["mse"] is None
        assert "(scores not aggregated)" in log
