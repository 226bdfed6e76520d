"""The server optimisers' moments and SCAFFOLD's control variate survive a restart.

Each strategy runs two rounds, is checkpointed, and a fresh strategy restored from the file
must take the third round exactly as the original does; over real processes, a server killed
mid-run must end on the model of a run never interrupted.
"""

import signal

import numpy as np
import pytest

from common.launch import LocalFederation
from common.models import linear
from common.scaffold import CONTROL_DELTA
from server.checkpoint import Checkpoint
from server.strategies.compressed import Compressed
from server.strategies.federated import FedAdam, FedAvgM, Federated, Scaffold
from server.strategy import ClientResult, FedAvg
from tests.test_federation import FAST, ROWS, SEED
from tests.vanishing import start_with_vanishing_server

SGD = {"model": "lr-sgd", "local_epochs": 1, "learning_rate": 0.1, "batch_size": 8}


def base() -> FedAvg:
    return FedAvg(SGD, check=linear.check_weights)


MAKERS = {
    "fedavgm": lambda: FedAvgM(base(), lr=1.0, momentum=0.9),
    "fedadam": lambda: FedAdam(base(), lr=0.1),
    "scaffold": lambda: Scaffold(base()),
    "compressed fedadam": lambda: Compressed(FedAdam(base(), lr=0.1), "int8", 0.1),
}


def updates(server_round: int, current) -> list[ClientResult]:
    """Two provinces' updates: steps that differ from round to round, with SCAFFOLD's Δc_i."""
    rng = np.random.default_rng(server_round)
    results = []
    for province in ("hubei", "fujian"):
        step = rng.normal(size=3)
        arrays = {
            "coef": current["coef"] + step[:2],
            "intercept": np.asarray(current["intercept"] + step[2]),
            CONTROL_DELTA: rng.normal(size=3),
        }
        results.append(ClientResult(province, 10, {}, arrays))
    return results


def play(strategy, server_round: int, current):
    """One round as the server plays it: the new weights, and all it sent, made and keeps."""
    sent = strategy.configure_fit(server_round, current, ["hubei", "fujian"])[0].parameters
    results = updates(server_round, current)
    if not isinstance(strategy, Scaffold):
        results = [ClientResult(r.province, r.num_examples, {}, strip(r.arrays)) for r in results]
    merged = strategy.aggregate_fit(server_round, results, [], current)
    return merged, {**{f"sent {k}": a for k, a in sent.items()}, **merged, **strategy.state()}


def strip(arrays):
    return {name: a for name, a in arrays.items() if name != CONTROL_DELTA}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_a_restored_strategy_takes_the_next_round_as_the_original(tmp_path, name):
    original = MAKERS[name]()
    current = {"coef": np.zeros(2), "intercept": np.asarray(0.0)}
    for server_round in (1, 2):
        current, _ = play(original, server_round, current)
    kept = original.state()
    assert kept and all(np.any(a != 0) for a in kept.values())
    path = tmp_path / "checkpoint.npz"
    Checkpoint(2, current, np.zeros(2), np.ones(2), {}, kept).save(path)
    loaded = Checkpoint.load(path)
    restored = MAKERS[name]()
    restored.restore(loaded.strategy_state)
    _, expected = play(original, 3, current)
    _, again = play(restored, 3, loaded.parameters)
    assert again.keys() == expected.keys()
    for tensor in expected:
        np.testing.assert_array_equal(again[tensor], expected[tensor])
    _, forgetful = play(MAKERS[name](), 3, current)  # what a restart without the state would do
    assert any(not np.allclose(forgetful[t], expected[t]) for t in expected)


def test_a_stateless_strategy_keeps_nothing_and_refuses_another_strategys_state(tmp_path):
    assert Federated(base()).state() == {} and base().state() == {}
    path = tmp_path / "checkpoint.npz"
    Checkpoint(1, {}, np.zeros(2), np.ones(2), {}).save(path)
    assert Checkpoint.load(path).strategy_state == {}
    with pytest.raises(ValueError, match=r"velocity.*another --strategy"):
        FedAdam(base(), lr=0.1).restore({"velocity": np.zeros(3)})


@pytest.mark.integration
def test_a_killed_server_resumes_fedavgm_with_its_momentum(tmp_path):
    """Real processes: a run whose server is killed (SIGKILL) right after round three is
    recorded, so that it resumes from round three's checkpoint, ends on the very model of a run
    never interrupted; had the momentum been reset, the rounds after would differ."""
    flags = [*FAST, "--min-clients", "9", "--strategy", "fedavgm"]
    models = []
    for name in ("whole", "killed"):
        federation = LocalFederation(tmp_path / name, "lr-sgd", 6, ROWS, SEED, server_args=flags)
        if name == "killed":
            start_with_vanishing_server(federation, "3:recorded:1")
            assert federation.server.wait(timeout=600) == -signal.SIGKILL
            federation.start_server()
        else:
            federation.start()
        codes = federation.wait(timeout=300)
        assert set(codes.values()) == {0}, codes
        models.append(np.load(tmp_path / name / federation.results()["final"]["model_file"]))
    assert "resuming after round 3 from" in (tmp_path / "killed" / "server.log").read_text()
    whole, killed = models
    for tensor in ("coef", "intercept"):
        np.testing.assert_allclose(killed[tensor], whole[tensor], rtol=1e-9, atol=1e-12)
