"""`make bench-flower`: fedstock and Flower's legacy gRPC runtime on the same job, in one run.

The job: nine client processes, each with its province's first N synthetic rows (300,000 by
default), eight features, one local SGD epoch a round from the global weights (64-row batches,
step 0.02, the same numpy step on both systems: client/steps.py), FedAvg, federated evaluation
on each province's test rows, R rounds, plaintext on loopback. Prints each system's median
round and the ratio. Both systems' rounds are timed the same way: from one round's end (its
evaluation aggregated) to the next one's, so each includes what its system does between rounds
(fedstock's recording: `interval_seconds` in results.json; Flower's own bookkeeping).
Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from client.links import TRANSPORTS
from common.data.synthetic import province_rows, synthesize_province
from common.launch import SINGLE_THREADED, LocalFederation, free_port
from common.preprocess import split
from common.provinces import PROVINCES

JOB = Path(__file__).with_name("flower_job.py")


def province_frames(rows: int, seed: int) -> dict:
    """Each province's first `rows` rows: a market large enough that the smallest has them."""
    shares = province_rows(2_699_730)
    frames = {}
    for province in PROVINCES:
        total = math.ceil(rows * 2_699_730 / shares[province] * 1.05)
        frames[province] = synthesize_province(province, total, seed).head(rows)
    return frames


def write_data(frames: dict, out: Path) -> tuple[Path, Path]:
    """Parquet files for fedstock's clients; standardised arrays for Flower's."""
    parquet, arrays = out / "parquet", out / "npz"
    parquet.mkdir(parents=True, exist_ok=True)
    arrays.mkdir(parents=True, exist_ok=True)
    splits = {}
    for province, frame in frames.items():
        frame.to_parquet(parquet / f"{province}.parquet")
        splits[province] = split(frame)
    # Global scaling from every province's training rows, as the federation's statistics give.
    x_all = np.concatenate([s.x_train for s in splits.values()])
    mean, std = x_all.mean(axis=0), x_all.std(axis=0)
    close = splits[PROVINCES[0]].features.index("close")
    change = np.concatenate([s.y_train - s.x_train[:, close] for s in splits.values()])

    def target(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """lr-sgd's target: tomorrow's change from today's close, standardised."""
        return (y - x[:, close] - change.mean()) / change.std()

    for province, s in splits.items():
        np.savez(
            arrays / f"{province}.npz",
            x_train=(s.x_train - mean) / std,
            y_train=target(s.x_train, s.y_train),
            x_test=(s.x_test - mean) / std,
            y_test=target(s.x_test, s.y_test),
        )
    return parquet, arrays


def fedstock_rounds(parquet: Path, out: Path, rounds: int, transport: str) -> list[float]:
    folder = out / f"fedstock-{transport}"
    # A fresh run: the provinces' receipts of an earlier run would refuse this run's ledger.
    shutil.rmtree(folder, ignore_errors=True)
    federation = LocalFederation(
        folder,
        "lr-sgd",
        rounds,
        data=parquet,
        insecure=True,
        server_args=["--poll-seconds", "5"],
        client_args=["--transport", transport],
    )
    federation.start()
    codes = federation.wait(timeout=3600)
    if set(codes.values()) != {0}:
        raise SystemExit(f"fedstock run failed: exit codes {codes} (logs in {federation.out})")
    # Round end to round end; the first round has no end before it, as on Flower's side.
    return [r["interval_seconds"] for r in federation.results()["rounds"][1:]]


def wait_for_port(port: int, process: subprocess.Popen, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Flower's server exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"Flower's server did not listen on {port} within {limit:g} s")


def flower_rounds(python: Path, arrays: Path, out: Path, rounds: int) -> list[float]:
    port, times = free_port(), out / "flower-times.json"
    logs = out / "flower-logs"
    logs.mkdir(parents=True, exist_ok=True)
    # numba's cache beside client/steps.py was written for the module `client.steps`; loaded by
    # its path under another name, its entries name a module Flower's clients cannot import, and
    # every fit failed. Flower's processes compile into a cache of their own, and get one BLAS
    # thread each as fedstock's processes do (LocalFederation), so neither system's clients
    # spin BLAS threads against the other's.
    env = {**os.environ, **SINGLE_THREADED, "NUMBA_CACHE_DIR": str(out / "flower-numba-cache")}

    def spawn(name: str, *args: str) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("w")
        return subprocess.Popen(
            [str(python), str(JOB), *args, "--port", str(port)], stdout=log, stderr=log, env=env
        )

    server = spawn("server", "server", "--rounds", str(rounds), "--times", str(times))
    wait_for_port(port, server)
    clients = [spawn(p, "client", "--data", str(arrays / f"{p}.npz")) for p in PROVINCES]
    try:
        code = server.wait(timeout=3600)
    finally:
        for client in clients:
            try:
                client.wait(timeout=60)
            except subprocess.TimeoutExpired:
                client.kill()
    if code != 0:
        raise SystemExit(f"Flower's server exited with {code} (logs in {logs})")
    ends = json.loads(times.read_text())["round_ends"]
    return list(np.diff(ends))  # the first round's start (clients connecting) is not a round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--rows-per-province", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--flower-python", type=Path, default=Path(".venv-flower/bin/python"))
    parser.add_argument("--out", type=Path, default=Path("runs/flower"))
    parser.add_argument(
        "--transports",
        nargs="+",
        choices=TRANSPORTS,
        default=list(TRANSPORTS),
        help="fedstock's client transports to run, each a run of its own",
    )
    parser.add_argument("--skip-flower", action="store_true", help="run fedstock only")
    args = parser.parse_args()
    started = time.perf_counter()
    parquet, arrays = write_data(province_frames(args.rows_per_province, args.seed), args.out)
    print(f"data: 9 x {args.rows_per_province:,} rows in {time.perf_counter() - started:.1f} s")
    # Rounds 2..R on both: from the end of round 1 on, so start-up is left out.
    medians = {
        f"fedstock (lr-sgd, --transport {t})": statistics.median(
            fedstock_rounds(parquet, args.out, args.rounds, t)
        )
        for t in args.transports
    }
    if not args.skip_flower:
        theirs = flower_rounds(args.flower_python, arrays, args.out, args.rounds)
        medians["Flower 1.42 legacy gRPC"] = statistics.median(theirs)
    print(f"\n{args.rounds} rounds, 9 clients x {args.rows_per_province:,} rows, train + evaluate")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'system':<40} {'median round s (end to end)':>28}")
    for name, median in medians.items():
        print(f"{name:<40} {median:>28.4f}")
    flower = medians.get("Flower 1.42 legacy gRPC")
    for name, median in medians.items():
        if flower and name.startswith("fedstock"):
            print(f"ratio {name} / Flower: {median / flower:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
