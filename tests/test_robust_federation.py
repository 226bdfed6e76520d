"""Two poisoned provinces among nine, over real localhost gRPC: FedAvg breaks, Multi-Krum holds.

Seven honest provinces run as client processes. The other two are real client daemons in
threads, with their own rows and certificates, honest in statistics and evaluation but lying
in training: their updates have the right names and shapes, so no check can refuse them.
The model is lr: each province's step is to its own least-squares fit. Coordinate-wise rules
(median, trimmed mean) fare worse here than Multi-Krum, because the price features are nearly
collinear and the provinces' fits split the weight among them differently: a coordinate-wise
mix of different fits is not itself a good fit.
"""

import threading

import numpy as np
import pytest

from client.daemon import ClientDaemon
from client.local import LocalWork, Outcome
from common.data import synthesize_province
from common.provinces import PROVINCES
from common.tls import client_credentials
from common.vectors import flatten, unflatten
from server.localrun import LocalFederation
from tests.test_federation import FAST, ROWS, SEED

pytestmark = pytest.mark.integration

ATTACKERS = ("guangdong", "shanghai")
HONEST = tuple(p for p in PROVINCES if p not in ATTACKERS)


def poison(step: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A crafted step: the honest one boosted, reversed and boosted, or noise."""
    if kind == "scaled":
        return 100.0 * step
    if kind == "sign-flipped":
        return -10.0 * step
    return rng.normal(scale=100.0, size=step.shape)


class PoisonedWork(LocalWork):
    """Trains honestly, then sends a poisoned step from the global weights, by turns."""

    KINDS = ("scaled", "sign-flipped", "random")

    def __init__(self, province: str, turn: int) -> None:
        super().__init__(synthesize_province(province, ROWS, SEED))
        self.turn = turn
        self.rng = np.random.default_rng(turn)

    def train(self, config, scaler, parameters) -> Outcome:
        honest = super().train(config, scaler, parameters)
        start = flatten(parameters) if parameters else 0.0
        kind = self.KINDS[(int(config["round"]) + self.turn) % len(self.KINDS)]
        lie = start + poison(flatten(honest.arrays) - start, kind, self.rng)
        return Outcome(honest.num_examples, honest.metrics, unflatten(lie, honest.arrays))


def run(tmp_path, *server_args, attacked=True):
    provinces = HONEST if attacked else PROVINCES
    federation = LocalFederation(
        tmp_path,
        rounds=3,
        rows=ROWS,
        seed=SEED,
        provinces=provinces,
        server_args=[*FAST, "--min-available", "9", *server_args],
    )
    federation.start_server()
    threads = []
    if attacked:
        for turn, province in enumerate(ATTACKERS):
            daemon = ClientDaemon(
                province,
                federation.address,
                client_credentials(federation.tls_dir, province),
                PoisonedWork(province, turn),
                connect_timeout=180,
                transfer_timeout=60,
                max_model_bytes=1 << 20,
            )
            threads.append(threading.Thread(target=daemon.run, daemon=True))
    for province in provinces:
        federation.start_client(province)
    for thread in threads:
        thread.start()
    codes = federation.wait(timeout=240)
    for thread in threads:
        thread.join(timeout=30)
    assert set(codes.values()) == {0}, codes
    results = federation.results()
    assert all(set(r["clients"]) == set(PROVINCES) for r in results["rounds"])
    return results["final"]["mse"]


def test_fedavg_is_poisoned_and_multi_krum_is_not(tmp_path):
    clean = run(tmp_path / "clean", attacked=False)
    assert run(tmp_path / "mean") > 1000 * clean
    assert run(tmp_path / "multi-krum", "--aggregation", "multi-krum") < 1.1 * clean
