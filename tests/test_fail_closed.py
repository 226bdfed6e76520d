"""A fault anywhere in the round loop ends the run cleanly, with real client processes.

The server runs in this process (its strategy raises in the phase under test); the clients are
real processes over localhost gRPC. Each must be told STOP(failed) and exit non-zero, the results
must say the run failed and why, and the port must be closed: no process left that answers
nothing.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.launch import LocalFederation
from common.preprocess import SETTINGS
from server.__main__ import build_server
from server.coordinator import Coordinator
from server.ledger import Ledger, Signer
from server.lifecycle import run_to_end
from server.results import ResultsFile
from server.rounds import RoundLoop, RunSettings
from server.strategy import ExactLinear, Strategy
from tests.test_federation import ROWS, SEED

pytestmark = pytest.mark.integration

PROVINCES = ("hubei", "fujian")


class FaultyExactLinear(ExactLinear):
    """Exact least squares that fails in one chosen phase, as a bug or a full disk would."""

    def __init__(self, phase: str) -> None:
        super().__init__({"model": "lr-exact"})
        self.phase = phase

    def _fault(self, phase: str) -> None:
        if phase == self.phase:
            raise RuntimeError(f"injected fault in the {phase} phase")

    def prepare(self, statistics, train_samples):
        self._fault("statistics")

    def aggregate_fit(self, server_round, results, failures, current):
        self._fault("train")
        return super().aggregate_fit(server_round, results, failures, current)

    def aggregate_evaluate(self, server_round, results, failures):
        self._fault("evaluate")
        return super().aggregate_evaluate(server_round, results, failures)

    def round_report(self, server_round):
        # The crash: a finite input that overflows to a value JSON cannot hold.
        return {"overflow": math.inf} if self.phase == "record" else {}


@dataclass(frozen=True)
class Run:
    status: int  # the server's
    codes: dict[str, int]  # the clients' exit codes
    results: dict
    address: str


def run_in_process(tmp_path: Path, strategy: Strategy, min_clients: int, deadline: float) -> Run:
    """Two rounds of `strategy` served from this process to real client processes of
    PROVINCES, ended as `python -m server` ends a run."""
    federation = LocalFederation(tmp_path, "lr-exact", 2, ROWS, SEED, provinces=PROVINCES)
    federation.insecure = True
    coordinator = Coordinator(poll_seconds=2)
    server, health_servicer = build_server(coordinator, federation.address, 16, 1 << 20)
    results = ResultsFile(tmp_path / "results.json", {"model": "lr-exact", "setting": SETTINGS[0]})
    settings = RunSettings(2, min_clients, len(PROVINCES), deadline, 240, SETTINGS[0], 0.2, 0)
    loop = RoundLoop(
        coordinator,
        strategy,
        settings,
        results,
        Ledger(tmp_path / "ledger.jsonl", Signer.ephemeral()),
        tmp_path / "checkpoint.npz",
    )
    server.start()
    for province in PROVINCES:
        federation.start_client(province)
    try:
        status = run_to_end(
            loop.run, coordinator, server, health_servicer, results, grace_seconds=60
        )
        codes = {p: federation.clients[p].wait(timeout=120) for p in PROVINCES}
    finally:
        federation.kill()
    return Run(status, codes, json.loads(results.path.read_text()), federation.address)


@pytest.mark.parametrize(
    ("phase", "why"),
    [
        ("statistics", "injected fault in the statistics phase"),
        ("train", "injected fault in the train phase"),
        ("evaluate", "injected fault in the evaluate phase"),
        ("record", "Out of range float values are not JSON compliant"),
    ],
)
def test_a_fault_in_any_phase_stops_every_client_and_closes_the_port(tmp_path, phase, why):
    run = run_in_process(tmp_path, FaultyExactLinear(phase), len(PROVINCES), 120)
    assert run.status == 1
    assert run.results["status"] == "failed" and why in run.results["failure"], run.results
    assert run.results["final"] is None
    for province in PROVINCES:
        assert run.codes[province] != 0, (province, run.codes)
        log = (tmp_path / f"{province}.log").read_text()
        assert "the federation failed" in log and why in log, log[-2000:]
    # The server is gone, not hanging: nothing listens on its port any more.
    with (
        grpc.insecure_channel(run.address) as channel,
        pytest.raises(grpc.RpcError) as probe,
    ):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert probe.value.code() == grpc.StatusCode.UNAVAILABLE
