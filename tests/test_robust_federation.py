"""Two poisoned provinces among nine, over real localhost gRPC: FedAvg breaks, robust rules hold.

Seven honest provinces run as client processes. The other two are real client daemons in
threads, with their own rows and certificates, honest in statistics and evaluation but lying
in training: their updates have the right names and shapes, so no check can refuse them.

The model is lr-sgd: every province takes a few gradient steps from the same global weights,
so honest steps lie close together and a robust rule's pick among them is itself a good step.
(With closed-form lr each step goes to the province's own least-squares fit; the price features
are nearly collinear and the provinces split the weight among them differently, so a
coordinate-wise median of such fits, or any single one of them, is not a good fit.)

Each rule meets all three attacks in one federation, one a round (six federations in all, not
one per rule and attack, to keep the test to minutes): FedAvg leaves the clean run's MSE
behind from the first round and ends more than a thousandfold above it, while every robust
rule stays within 10 % of the clean run's MSE after every round.
"""

import threading

import numpy as np
import pytest

from client.daemon import ClientDaemon
from client.local import LocalWork, Outcome
from common.data import synthesize_province
from common.launch import LocalFederation
from common.provinces import PROVINCES
from common.settings import RoundNumber
from common.tls import client_credentials
from common.vectors import flatten, unflatten
from tests.test_federation import FAST, ROWS, SEED

pytestmark = pytest.mark.integration

ATTACKERS = ("guangdong", "shanghai")
HONEST = tuple(p for p in PROVINCES if p not in ATTACKERS)
ATTACKS = ("scaled", "sign-flipped", "random")
ROBUST = ("median", "trimmed-mean", "krum", "multi-krum")


def poison(step: np.ndarray, attack: str, rng: np.random.Generator) -> np.ndarray:
    """A crafted step: the honest one boosted, reversed and boosted, or noise."""
    if attack == "scaled":
        return 100.0 * step
    if attack == "sign-flipped":
        return -100.0 * step
    return rng.normal(scale=100.0, size=step.shape)


class PoisonedWork(LocalWork):
    """Trains honestly, then sends a poisoned step from the global weights: round r's attack
    is ATTACKS[r − 1], so three rounds see them all."""

    def __init__(self, province: str) -> None:
        super().__init__(synthesize_province(province, ROWS, SEED))
        self.rng = np.random.default_rng(PROVINCES.index(province))

    def train(self, groups, scaler, parameters) -> Outcome:
        honest = super().train(groups, scaler, parameters)
        start = flatten(parameters) if parameters else 0.0
        attack = ATTACKS[(groups.need(RoundNumber).round - 1) % len(ATTACKS)]
        lie = start + poison(flatten(honest.arrays) - start, attack, self.rng)
        return Outcome(honest.num_examples, honest.metrics, unflatten(lie, honest.arrays))


def run(out, *server_args, attacked=True) -> list[float]:
    """The global test MSE after each of three rounds of lr-sgd."""
    provinces = HONEST if attacked else PROVINCES
    federation = LocalFederation(
        out,
        "lr-sgd",
        rounds=len(ATTACKS),
        rows=ROWS,
        seed=SEED,
        provinces=provinces,
        server_args=[*FAST, "--min-available", "9", *server_args],
    )
    federation.start_server()
    threads = []
    if attacked:
        for province in ATTACKERS:
            daemon = ClientDaemon(
                province,
                federation.address,
                client_credentials(federation.tls_dir, province),
                PoisonedWork(province),
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
    rounds = federation.results()["rounds"]
    assert all(set(r["clients"]) == set(PROVINCES) for r in rounds)
    return [r["mse"] for r in rounds]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> list[float]:
    return run(tmp_path_factory.mktemp("clean"), attacked=False)


def test_fedavg_is_poisoned(tmp_path, clean):
    attacked = run(tmp_path)
    print(f"mean: clean {clean}, attacked round by round ({', '.join(ATTACKS)}) {attacked}")
    for attack, mse, reference in zip(ATTACKS, attacked, clean, strict=True):
        assert mse > 1.1 * reference, (attack, mse, reference)
    assert attacked[-1] > 1000 * clean[-1]


@pytest.mark.parametrize("aggregation", ROBUST)
def test_robust_aggregation_holds_against_every_attack(tmp_path, clean, aggregation):
    attacked = run(tmp_path, "--aggregation", aggregation)
    print(
        f"{aggregation}: clean {clean}, attacked round by round ({', '.join(ATTACKS)}) {attacked}"
    )
    for attack, mse, reference in zip(ATTACKS, attacked, clean, strict=True):
        assert mse < 1.1 * reference, (attack, mse, reference)
