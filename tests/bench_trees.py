"""`make bench-trees`: fedstock's federated gbdt beside XGBoost's own federated mode, in one run.

The same nine provinces, rows and settings (100 trees of depth 8, η 0.3, λ 1, min child weight
1, 256 bins by default), both learning tomorrow's change from today's close: fedstock's server
and nine client processes over plaintext gRPC on loopback, and XGBoost's federated gRPC server
with nine worker processes (tree_method=hist, one thread each). Beside them, on the union of the
rows: fedstock's centralised gbdt, XGBoost and LightGBM. Prints MSE and seconds; writes
trees.json. XGBoost and LightGBM live in their own virtual environment, never the project's.
Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from baselines import centralised
from baselines.data import DataOptions
from baselines.models import ModelOptions
from common.data import synthesize_province
from common.data.synthetic import DEFAULT_SEED
from common.models.histgrow import TREE_MODELS, TreeSettings
from common.preprocess import split
from common.provinces import PROVINCES
from server.localrun import LocalFederation, free_port

JOB = Path(__file__).with_name("xgboost_job.py")
SINGLE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_provinces(rows: int, seed: int, folder: Path) -> float:
    """Each province's rows as the federation splits them; the union's mean change."""
    folder.mkdir(parents=True, exist_ok=True)
    changes = []
    for province in PROVINCES:
        s = split(synthesize_province(province, rows, seed))
        close = s.features.index("close")
        change = s.y_train - s.x_train[:, close]
        changes.append(change)
        np.savez(
            folder / f"{province}.npz",
            x_train=s.x_train,
            change_train=change,
            x_test=s.x_test,
            y_test=s.y_test,
            close_test=s.x_test[:, close],
        )
    return float(np.concatenate(changes).mean())


def fedstock_federated(out: Path, rows: int, seed: int, flags: list[str]) -> dict:
    # A fresh run: the provinces' receipts of an earlier run would refuse this run's ledger.
    shutil.rmtree(out, ignore_errors=True)
    federation = LocalFederation(
        out, "gbdt", 1, rows, seed, server_args=[*flags, "--round-timeout", "3600"], insecure=True
    )
    started = time.perf_counter()
    federation.start()
    codes = federation.wait(timeout=7200)
    wall = time.perf_counter() - started
    if set(codes.values()) != {0}:
        return {"failed": codes}
    results = federation.results()
    record = results["rounds"][0]
    return {
        "mse": results["final"]["mse"],
        "train_seconds": results["final"]["train_seconds"],
        "wall_seconds": wall,
        "exchanges": record["trees"]["exchanges"],
        "server_cpu_seconds": record["server_cpu_seconds"],
        "bytes_up": record["bytes_up"] + record["trees"]["bytes_up"],
        "bytes_down": record["bytes_down"] + record["trees"]["bytes_down"],
    }


def wait_for_port(port: int, process: subprocess.Popen, patience: float = 60.0) -> None:
    end = time.monotonic() + patience
    while time.monotonic() < end and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("XGBoost's federated server did not come up")


def xgboost_federated(python: str, data: Path, out: Path, env: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    port, n = free_port(), len(PROVINCES)
    started = time.perf_counter()
    server = subprocess.Popen([python, str(JOB), "server", str(n), str(port)], env=env)
    try:
        wait_for_port(port, server)
        workers = [
            subprocess.Popen(
                [
                    python,
                    str(JOB),
                    "worker",
                    str(port),
                    str(rank),
                    str(n),
                    str(data / f"{province}.npz"),
                    str(out / f"{province}.json"),
                ],
                env=env,
            )
            for rank, province in enumerate(PROVINCES)
        ]
        codes = [w.wait(timeout=7200) for w in workers]
    finally:
        server.kill()
        server.wait()
    wall = time.perf_counter() - started
    if any(codes):
        return {"failed": codes}
    records = [json.loads((out / f"{p}.json").read_text()) for p in PROVINCES]
    return {
        "mse": sum(r["sse"] for r in records) / sum(r["rows"] for r in records),
        "train_seconds": max(r["seconds"] for r in records),
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_trees", allow_abbrev=False)
    parser.add_argument("--rows", type=int, default=270_000, help="rows of the synthetic market")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the market")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--max-depth", type=int, default=8)
    parser.add_argument("--bench-python", required=True, help="Python with xgboost, lightgbm")
    parser.add_argument("--out", type=Path, default=Path("runs/trees"))
    parser.add_argument(
        "--federated-only",
        action="store_true",
        help="only the two federations (fedstock's and XGBoost's), not the centralised runs",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = replace(TREE_MODELS["gbdt"].defaults, trees=args.trees, max_depth=args.max_depth)
    base_score = write_provinces(args.rows, args.seed, args.out / "data")
    flags = ["--gbdt-trees", str(args.trees), "--gbdt-max-depth", str(args.max_depth)]
    env = {
        **os.environ,
        **SINGLE,
        "TREE_SETTINGS": json.dumps({**asdict(settings), "base_score": base_score}),
    }
    print(
        f"{args.rows} rows, nine provinces; {args.trees} trees of depth {args.max_depth}",
        flush=True,
    )

    figures = {}
    figures["fedstock federated"] = fedstock_federated(
        args.out / "fedstock", args.rows, args.seed, flags
    )
    print("fedstock federated", figures["fedstock federated"], flush=True)
    figures["xgboost federated"] = xgboost_federated(
        args.bench_python, args.out / "data", args.out / "xgboost", env
    )
    print("xgboost federated", figures["xgboost federated"], flush=True)
    if not args.federated_only:
        figures.update(centralised_figures(args, settings, env))
    print_table(figures)
    (args.out / "trees.json").write_text(
        json.dumps({"rows": args.rows, "settings": asdict(settings), "figures": figures}, indent=2)
    )


def centralised_figures(args: argparse.Namespace, settings: TreeSettings, env: dict) -> dict:
    """fedstock's, XGBoost's and LightGBM's gbdt on the union of the rows, and persistence."""
    figures = {}
    data = DataOptions(rows=args.rows, seed=args.seed)
    options = ModelOptions(tree_settings={"gbdt": settings})
    outcome = centralised.run("gbdt", data, options)
    figures["fedstock centralised"] = {
        "mse": outcome["final"]["mse"],
        "train_seconds": outcome["final"]["train_seconds"],
    }
    print("fedstock centralised", figures["fedstock centralised"], flush=True)
    central = args.out / "central.json"
    subprocess.run(
        [args.bench_python, str(JOB), "central", str(args.out / "data"), str(central)],
        env={**env, "OMP_NUM_THREADS": "2"},
        check=True,
    )
    for name, record in json.loads(central.read_text()).items():
        figures[f"{name} centralised"] = {"mse": record["mse"], "train_seconds": record["seconds"]}

    persistence = []
    for province in PROVINCES:
        part = np.load(args.out / "data" / f"{province}.npz")
        persistence.append((part["close_test"] - part["y_test"]) ** 2)
    figures["persistence"] = {"mse": float(np.concatenate(persistence).mean())}
    return figures


def print_table(figures: dict) -> None:
    """MSE and seconds of each part; the federations' ratio, and the server's CPU an exchange."""
    print(f"\n{'':24} {'MSE':>10} {'train s':>9} {'wall s':>8}")
    for name, f in figures.items():
        mse = f"{f['mse']:.6g}" if "mse" in f else "failed"
        train = f"{f['train_seconds']:.2f}" if "train_seconds" in f else ""
        wall = f"{f['wall_seconds']:.2f}" if "wall_seconds" in f else ""
        print(f"{name:24} {mse:>10} {train:>9} {wall:>8}")
    ours, theirs = figures["fedstock federated"], figures["xgboost federated"]
    if "train_seconds" in ours and "train_seconds" in theirs:
        ratio = ours["train_seconds"] / theirs["train_seconds"]
        cpu = ours["server_cpu_seconds"] / ours["exchanges"] * 1e3
        print(
            f"fedstock's federated training took {ratio:.2f} times XGBoost's; fedstock's "
            f"server spent {cpu:.2f} ms of CPU an exchange"
        )


if __name__ == "__main__":
    main()
