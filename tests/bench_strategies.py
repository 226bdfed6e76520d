"""`make bench-strategies`: each strategy and compression against FedAvg, on real processes.

The split is the synthetic market's strongly non-IID one (`python -m common.data synth --split
non-iid`): each province holds one band of price levels, with 5–20 % of the rows, so features
and targets differ by province. The setting is the paper's (same-day price), where a linear model
has something to learn: the price lies between the day's high and low, a direction the nearly
collinear price features leave to slow gradient steps, so convergence takes many rounds (in the
next-day setting, tomorrow's change is noise to a linear model and round one already ties the
exact fit). Each
strategy trains `lr-sgd` for many local epochs; provinces' step counts differ with their rows
(τ_i from about 200 to 1,600 at the defaults), the unequal local work FedNova normalises.

Strategies: rounds until the global test MSE first reaches the target (--target-factor times
the exact, centralised-equivalent fit's MSE: 3 by default, as the first round ends some 4.3
times above it and gradient steps close that gap only over tens of rounds), the final MSE,
and the spread of the provinces' MSE (the standard deviation and the worst over the best; in
yuan², so the dearest band's errors dominate). Communication: the bytes clients send
per round (tensor bytes, framing not counted) and the MSE after the last round, for each
compression at one local epoch and for several local epochs uncompressed (more work per byte).
Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common.data.loaders import write_provinces
from common.data.skew import non_iid_split
from common.launch import LocalFederation

STRATEGIES: dict[str, list[str]] = {
    "fedavg": [],
    "fedprox μ=0.1": ["--strategy", "fedprox", "--mu", "0.1"],
    "fednova": ["--strategy", "fednova"],
    "scaffold": ["--strategy", "scaffold"],
    "qfedavg q=1": ["--strategy", "qfedavg", "--q", "1"],
    "fedadam": ["--strategy", "fedadam"],
    "fedavgm β=0.5": ["--strategy", "fedavgm", "--server-momentum", "0.5"],
}
# Each at one local epoch unless it says otherwise; top-k carries what it drops to the next round.
COMPRESSIONS: dict[str, list[str]] = {
    "none": [],
    "float16": ["--compression", "float16"],
    "int8": ["--compression", "int8"],
    "top-k 30 %": ["--compression", "topk", "--topk-fraction", "0.3"],
    "5 local epochs": ["--local-epochs", "5"],
}


def federate(model: str, rounds: int, flags: list[str], args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as out:
        federation = LocalFederation(
            Path(out),
            model,
            rounds,
            args.rows,
            args.seed,
            data=args.data,
            server_args=["--poll-seconds", "2", "--setting", args.setting, *flags],
        )
        federation.start()
        codes = federation.wait(timeout=1800)
        if set(codes.values()) != {0}:
            raise RuntimeError(f"{model} {flags}: processes failed: {codes}")
        return federation.results()


def strategy_row(name: str, results: dict, target: float) -> dict[str, Any]:
    curve = [r["mse"] for r in results["rounds"]]
    reached = next((i + 1 for i, mse in enumerate(curve) if mse <= target), None)
    per_province = [s["mse"] for s in results["final"]["per_client"].values()]
    return {
        "strategy": name,
        "rounds_to_target": reached,
        "final_mse": curve[-1],
        "province_mse_std": float(np.std(per_province)),
        "worst_over_best": max(per_province) / min(per_province),
        "curve": curve,
    }


def compression_row(name: str, results: dict) -> dict[str, Any]:
    rounds = results["rounds"][1:]  # round one has no global weights to step from: sent whole
    with_bytes = [r["update_bytes"] for r in rounds if "update_bytes" in r]
    if not with_bytes:  # uncompressed: every client sends the whole float64 model
        parameters = results["statistics"]["columns"]  # the features plus the target
        with_bytes = [len(r["clients"]) * 8 * len(parameters) for r in rounds]
    return {
        "compression": name,
        "bytes_per_round": statistics.mean(with_bytes),
        "final_mse": results["final"]["mse"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m tests.bench_strategies", description=__doc__
    )
    parser.add_argument("--rows", type=int, default=30_000, help="rows of the synthetic market")
    parser.add_argument("--seed", type=int, default=3, help="seed of the synthetic market")
    parser.add_argument(
        "--split", choices=("non-iid", "provinces"), default="non-iid", help="province split"
    )
    parser.add_argument("--setting", default="paper", help="the server's --setting")
    parser.add_argument("--rounds", type=int, default=15, help="rounds per federation")
    parser.add_argument(
        "--local-epochs", type=int, default=20, help="local passes per round of the strategies"
    )
    parser.add_argument("--learning-rate", type=float, default=0.05, help="local step size")
    parser.add_argument(
        "--target-factor", type=float, default=3.0, help="target MSE over the exact fit's"
    )
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data:
        args.data = None
        if args.split == "non-iid":
            args.data = Path(data)
            write_provinces(non_iid_split(args.rows, args.seed), args.data)
        return bench(args)


def bench(args: argparse.Namespace) -> int:
    floor = federate("lr-exact", 1, [], args)["final"]["mse"]
    target = args.target_factor * floor
    training = [
        "--local-epochs",
        str(args.local_epochs),
        "--learning-rate",
        str(args.learning_rate),
    ]
    print(f"{args.split} split, {args.setting} setting", flush=True)
    print(f"exact fit MSE {floor:.6g}; target {target:.6g}", flush=True)
    strategies = []
    for name, flags in STRATEGIES.items():
        row = strategy_row(name, federate("lr-sgd", args.rounds, [*training, *flags], args), target)
        strategies.append(row)
        print(
            f"{name:<15} rounds to target {row['rounds_to_target'] or '—':>3}  "
            f"final MSE {row['final_mse']:.6g}  province MSE std {row['province_mse_std']:.4g}  "
            f"worst/best {row['worst_over_best']:.3g}",
            flush=True,
        )
    compressions = []
    for name, flags in COMPRESSIONS.items():
        # The last --local-epochs given wins.
        row = compression_row(
            name, federate("lr-sgd", args.rounds, [*training, "--local-epochs", "1", *flags], args)
        )
        compressions.append(row)
        print(
            f"{name:<15} bytes per round {row['bytes_per_round']:>8.0f}  "
            f"MSE after {args.rounds} rounds {row['final_mse']:.6g}",
            flush=True,
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"target": target, "strategies": strategies, "compression": compressions}
        (args.out / "strategies.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
