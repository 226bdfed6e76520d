"""Clients and the server killed mid-run (SIGKILL), with real processes over localhost."""

import json
import signal
import time

import numpy as np
import pytest

from common.launch import LocalFederation
from common.provinces import PROVINCES
from server.checkpoint import Checkpoint
from server.ledger import read_verified
from tests.test_federation import ROWS, SEED

pytestmark = pytest.mark.integration
# What a finished run leaves beside its results.
KEPT = ("results.json", "ledger.jsonl", "model.npz")


def recorded_rounds(federation: LocalFederation) -> int:
    """Rounds recorded so far, from the rounds log, which grows every round (results.json lags
    it by up to a second, longer than a run of small rounds takes); once the run has ended and
    the log is gone, from results.json."""
    try:
        return federation.results_path.with_name("rounds.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return len(json.loads(federation.results_path.read_text())["rounds"])


def wait_for_rounds(federation: LocalFederation, count: int, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if recorded_rounds(federation) >= count:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the federation did not reach round {count} in {timeout} s")


def test_a_killed_client_is_dropped_at_the_deadline_and_rejoins_when_restarted(tmp_path):
    rounds = 30  # enough that the kill lands mid-run even on a slow, busy machine
    federation = LocalFederation(
        tmp_path,
        "lr",
        rounds,
        ROWS,
        SEED,
        server_args=[
            "--poll-seconds",
            "2",
            # Long: the dead client's task then closes when its restarted self rejoins, so it is
            # back before the rounds run out however slow the machine (a restarted process may
            # take minutes to import and rejoin on a loaded one).
            "--round-timeout",
            "600",
            "--min-clients",
            "8",
            "--min-available",
            "9",
        ],
    )
    federation.start()
    wait_for_rounds(federation, 2)
    federation.clients["hubei"].send_signal(signal.SIGKILL)
    federation.clients["hubei"].wait()
    dropped_round = recorded_rounds(federation) + 1
    time.sleep(1)
    federation.start_client("hubei")
    codes = federation.wait(timeout=1200)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    records = federation.results()["rounds"]
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    # The kill may land in a training phase (hubei misses that round's training) or between
    # training and evaluation (it misses the evaluation only): either way a failure is recorded.
    dropped = [r for r in records if any(f["province"] == "hubei" for f in r["failures"])]
    assert dropped, "hubei's death should be recorded as a failure"
    assert all(r["round"] >= dropped_round - 1 for r in dropped)
    # A round hubei sat out is recorded either way: as its task's failure, or as its absence
    # (between the restart's Join and its first poll it is not connected yet).
    missed = [r for r in records if "hubei" not in r["clients"]]
    assert all(r in dropped or "hubei" in r["absent"] for r in missed), (
        "hubei missed a round with neither a failure nor its absence recorded"
    )
    assert all(r["absent"] == [] for r in records if r["round"] < dropped_round - 1)
    assert all(len(r["clients"]) >= 8 and r["mse"] is not None for r in records)
    assert "hubei" in records[-1]["clients"], "hubei should be back by the last round"


def test_a_killed_server_resumes_from_its_checkpoint_and_clients_come_back(tmp_path):
    rounds = 40
    federation = LocalFederation(
        tmp_path, "lr-exact", rounds, ROWS, SEED, server_args=["--poll-seconds", "2"]
    )
    federation.start()
    wait_for_rounds(federation, 3)
    federation.server.send_signal(signal.SIGKILL)
    federation.server.wait()
    # The rounds log shows a round before its checkpoint and ledger entry are written.
    before = read_verified(tmp_path / "ledger.jsonl")
    assert len(before) >= 2
    federation.start_server()
    codes = federation.wait(timeout=1200)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    results = federation.results()
    assert [r["round"] for r in results["rounds"]] == list(range(1, rounds + 1))
    ledger = read_verified(tmp_path / "ledger.jsonl")
    assert [e["round"] for e in ledger] == list(range(1, rounds + 1))
    assert ledger[: len(before)] == before
    assert results["final"]["ledger_head"] == ledger[-1]["hash"]
    assert "resuming after round" in (tmp_path / "server.log").read_text()
    assert not (tmp_path / "checkpoint.npz").exists()


def test_a_refused_resume_exits_with_the_reason_and_leaves_the_last_results_as_they_were(
    tmp_path,
):
    """A restart whose checkpoint is refused (another model's, or not a checkpoint at all)
    says why and exits 2 before it writes anything: the finished run's results.json, ledger
    and model keep every byte."""
    federation = LocalFederation(tmp_path, "lr-exact", 1, ROWS, SEED)
    federation.insecure = True
    federation.start()
    assert federation.wait(timeout=600) == {name: 0 for name in ["server", *PROVINCES]}
    kept = {name: (tmp_path / name).read_bytes() for name in KEPT}
    state = {"model": "rf", "setting": federation.results()["setting"], "train_seconds": 1.0}
    another = {**state, "evaluation": None, "ledger_entry": {}}
    refusals = [
        (
            lambda path: Checkpoint(1, {}, np.zeros(2), np.ones(2), another).save(path),
            "belongs to a run of model rf",
        ),
        (lambda path: path.write_bytes(b"not a checkpoint"), "cannot be read as a checkpoint"),
    ]
    for write, why in refusals:
        write(tmp_path / "checkpoint.npz")
        federation.clients = {}
        federation.start_server()
        assert federation.wait(timeout=300) == {"server": 2}
        log = (tmp_path / "server.log").read_text()
        assert f"{tmp_path / 'checkpoint.npz'} {why}" in log, log[-2000:]
        assert "remove it or choose another --results folder" in log
        for name, content in kept.items():
            assert (tmp_path / name).read_bytes() == content, name
