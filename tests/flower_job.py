"""The benchmark job on Flower's legacy gRPC runtime, run by `make bench-flower` in Flower's own
virtual environment (Flower is never a dependency of fedstock).

    python tests/flower_job.py server --port P --rounds R --clients N --times FILE
    python tests/flower_job.py client --port P --data PROVINCE.npz

Each client trains one local epoch a round from the global weights with fedstock's own local
step (client/steps.py, loaded by path: it needs numpy and numba alone), then scores the global
weights on its test rows, so both systems run the same two phases of the same arithmetic.
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


class Timed(flwr.server.strategy.FedAvg):
    """FedAvg that notes when each round's evaluation has been aggregated."""

    def __init__(self, times: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.times, self.ends = times, []

    def aggregate_evaluate(self, server_round, results, failures):
        aggregated = super().aggregate_evaluate(server_round, results, failures)
        self.ends.append(time.perf_counter())
        self.times.write_text(json.dumps({"round_ends": self.ends, "loss": aggregated[0]}))
        return aggregated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=9)
    parser.add_argument("--times", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    address = f"127.0.0.1:{args.port}"
    if args.role == "server":
        strategy = Timed(
            args.times,
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=args.clients,
            min_evaluate_clients=args.clients,
            min_available_clients=args.clients,
        )
        flwr.server.start_server(
            server_address=address,
            config=flwr.server.ServerConfig(num_rounds=args.rounds),
            strategy=strategy,
        )
    else:
        flwr.client.start_client(
            server_address=address, client=Province(args.data).to_client(), insecure=True
        )


if __name__ == "__main__":
    main()
