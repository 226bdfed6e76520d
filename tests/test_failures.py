"""Clients and the server killed mid-run (SIGKILL), with real processes over localhost."""

import signal

import numpy as np
import pytest

from common.launch import LocalFederation
from common.provinces import PROVINCES
from server.checkpoint import Checkpoint
from server.ledger import read_verified
from tests.test_federation import ROWS, SEED
from tests.vanishing import start_with_vanishing_server

pytestmark = pytest.mark.integration
# What a finished run leaves beside its results.
KEPT = ("results.json", "ledger.jsonl", "model.npz")


KILLED = "hubei"


def test_a_killed_client_is_dropped_when_it_rejoins_and_takes_part_again(tmp_path):
    """hubei dies (SIGKILL) on receiving round 3's training task and is restarted once it is
    dead: its task waits for it (the deadlines are far longer than the test's own limit) until
    the restarted hubei's Join closes it, so round 3 and no other records it as dropped."""
    rounds = 30  # the rounds after round 3 are the restarted hubei's to poll again in
    federation = LocalFederation(
        tmp_path,
        "lr",
        rounds,
        ROWS,
        SEED,
        provinces=tuple(p for p in PROVINCES if p != KILLED),
        server_args=[
            "--poll-seconds",
            "2",
            # Long: the dead client's task then closes when its restarted self rejoins, however
            # long a loaded machine takes to restart it, not when a deadline runs out first.
            "--round-timeout",
            "600",
            "--idle-timeout",
            "600",
            "--min-clients",
            "8",
            "--min-available",
            "9",
        ],
    )
    federation.start()
    vanishing = federation.start_client(
        KILLED, "--vanish-at", "3:train:1", module="tests.vanishing_client"
    )
    assert vanishing.wait(timeout=900) == -signal.SIGKILL
    federation.start_client(KILLED)
    codes = federation.wait(timeout=1200)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    records = federation.results()["rounds"]
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    dropped = {r["round"]: r["failures"] for r in records if r["failures"]}
    assert dropped == {
        3: [{"province": KILLED, "reason": "the client restarted during the task"}]
    }, dropped
    assert all(KILLED in r["clients"] and r["absent"] == [] for r in records[:2])
    assert KILLED not in records[2]["clients"]
    # Between the restarted hubei's Join and its first poll it is not connected yet: a round
    # it sat out then records its absence.
    missed = [r for r in records[3:] if KILLED not in r["clients"]]
    assert all(KILLED in r["absent"] for r in missed), missed
    assert all(len(r["clients"]) >= 8 and r["mse"] is not None for r in records)
    assert KILLED in records[-1]["clients"], "hubei should be back by the last round"


def test_a_server_killed_mid_round_resumes_from_its_checkpoint_and_clients_come_back(tmp_path):
    """The server dies (SIGKILL) when round 4's fifth training update arrives, the other
    provinces still training: restarted, it resumes after round 3, the last one recorded, and
    does round 4 again with the same clients."""
    rounds = 6
    federation = LocalFederation(
        tmp_path, "lr-exact", rounds, ROWS, SEED, server_args=["--poll-seconds", "2"]
    )
    start_with_vanishing_server(federation, "4:train:5")
    assert federation.server.wait(timeout=900) == -signal.SIGKILL
    before = read_verified(tmp_path / "ledger.jsonl")
    assert [e["round"] for e in before] == [1, 2, 3]
    federation.start_server()
    codes = federation.wait(timeout=1200)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    results = federation.results()
    assert [r["round"] for r in results["rounds"]] == list(range(1, rounds + 1))
    ledger = read_verified(tmp_path / "ledger.jsonl")
    assert [e["round"] for e in ledger] == list(range(1, rounds + 1))
    assert ledger[:3] == before
    assert results["final"]["ledger_head"] == ledger[-1]["hash"]
    assert "resuming after round 3 from" in (tmp_path / "server.log").read_text()
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
