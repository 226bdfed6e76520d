"""The benchmark jobs on Flower's legacy gRPC runtime, run by `make bench-flower` in Flower's own
virtual environment (Flower is never a dependency of fedstock).

    python tests/flower_job.py server --port P --rounds R [--clients N] [--floats F]
    python tests/flower_job.py client --port P --data PROVINCE.npz
    python tests/flower_job.py echo --port P --seed S

The job: each `client` trains one local epoch a round from the global weights with fedstock's
own local step (client/steps.py, loaded by path: it needs numpy and numba alone), then scores
the global weights on its test rows, so both systems run the same two phases of the same
arithmetic. The 10 MB variant (`--floats F` on the server): the model is F float64 weights and
an intercept, starting at zero; each `echo` client answers every round with the model plus
Gaussian noise (scale 1e-3), as tests/bench_fold.py's clients do, and nothing is evaluated.

The server prints its round ends (perf_counter seconds) as one JSON line once its rounds are
done, then waits until its stdin closes, so the bench can read its peak RSS from /proc.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import flwr
import numpy as np

STEPS_FILE = Path(__file__).resolve().parent.parent / "client" / "steps.py"
ROWS = 1_000  # the examples an echo client reports, as bench_fold's clients do


def load_steps():  # a module loaded by its path: it needs numpy and numba alone
    spec = importlib.util.spec_from_file_location("fedstock_steps", STEPS_FILE)
    module = importlib.util.module_from_spec(spec)
    # Registered under its name: numba's cached code names the module it was compiled in, and
    # a process reading another's entry imports it by that name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Province(flwr.client.NumPyClient):
    def __init__(self, data: Path) -> None:
        arrays = np.load(data)
        self.x, self.y = arrays["x_train"], arrays["y_train"]
        self.x_test, self.y_test = arrays["x_test"], arrays["y_test"]
        self.steps = load_steps()
        self.round = 0

    def fit(self, parameters, config):  # Flower's NumPyClient signature
        self.round += 1
        start = parameters[0] if parameters else np.zeros(self.x.shape[1] + 1)
        plan = SimpleNamespace(epochs=1, learning_rate=0.02, batch_size=64, mu=0.0, seed=self.round)
        weights = self.steps.sgd(self.x, self.y, start, plan)
        return [weights], len(self.y), {}

    def evaluate(self, parameters, config):
        w = parameters[0]
        mse = float(np.mean((self.x_test @ w[:-1] + w[-1] - self.y_test) ** 2))
        return mse, len(self.y_test), {"mse": mse}


class Echo(flwr.client.NumPyClient):
    """The 10 MB variant's client: no training, the model back with noise, as bench_fold's."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def fit(self, parameters, config):  # Flower's NumPyClient signature
        return [a + self.rng.normal(scale=1e-3, size=a.shape) for a in parameters], ROWS, {}


class Timed(flwr.server.strategy.FedAvg):
    """FedAvg that notes when each round ends: its evaluation aggregated, or its training where
    the round evaluates nothing (fedstock's figure ends at the same point)."""

    def __init__(self, evaluates: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.evaluates, self.ends = evaluates, []

    def aggregate_fit(self, server_round, results, failures):
        aggregated = super().aggregate_fit(server_round, results, failures)
        if not self.evaluates:
            self.ends.append(time.perf_counter())
        return aggregated

    def aggregate_evaluate(self, server_round, results, failures):
        aggregated = super().aggregate_evaluate(server_round, results, failures)
        self.ends.append(time.perf_counter())
        return aggregated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("role", choices=("server", "client", "echo"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=9)
    parser.add_argument("--floats", type=int, help="server: the 10 MB variant's model size")
    parser.add_argument("--data", type=Path, help="client: its province's arrays")
    parser.add_argument("--seed", type=int, help="echo: its noise's seed")
    args = parser.parse_args()
    address = f"127.0.0.1:{args.port}"
    if args.role == "client" and args.data is None:
        parser.error("a client needs --data")
    if args.role == "echo" and args.seed is None:
        parser.error("an echo client needs --seed")
    if args.floats is not None and args.floats < 1:
        parser.error("--floats must be at least 1")
    if args.role == "server":
        evaluates = args.floats is None
        # The variant starts from zero, as bench_fold's server; the job asks a client.
        start = None
        if not evaluates:
            start = flwr.common.ndarrays_to_parameters([np.zeros(args.floats), np.array(0.0)])
        strategy = Timed(
            evaluates,
            fraction_fit=1.0,
            fraction_evaluate=1.0 if evaluates else 0.0,
            min_fit_clients=args.clients,
            min_evaluate_clients=args.clients,
            min_available_clients=args.clients,
            initial_parameters=start,
        )
        flwr.server.start_server(
            server_address=address,
            config=flwr.server.ServerConfig(num_rounds=args.rounds),
            strategy=strategy,
        )
        # bench_fold's report_then_wait, which this environment cannot import.
        print(json.dumps({"round_ends": strategy.ends}), flush=True)
        sys.stdin.read()
    else:
        client = Province(args.data) if args.role == "client" else Echo(args.seed)
        flwr.client.start_client(server_address=address, client=client.to_client(), insecure=True)


if __name__ == "__main__":
    main()
