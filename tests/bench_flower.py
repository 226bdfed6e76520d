"""`make bench-flower`: fedstock and Flower's legacy gRPC runtime on the same job, in one run.

The job: nine client processes, each with its province's first N synthetic rows (300,000 by
default), eight features, one local SGD epoch a round from the global weights (64-row batches,
step 0.02, the same numpy step on both systems: client/steps.py), FedAvg, federated evaluation
on each province's test rows, R rounds, plaintext on loopback. Prints each system's median
round and the ratio. Both systems' rounds are timed the same way: from one round's end (its
evaluation aggregated) to the next one's, so each includes what its system does between rounds
(fedstock's recording: `interval_seconds` in results.json; Flower's own bookkeeping). The
work is not all the same: fedstock's training task also reports the new weights' training
MSE, its evaluation also the MAE, the direction share and the reference MSEs, and its server
records every round durably (docs/performance.md, "The Flower job: the same work, and
fedstock's own"); Flower's job does none of these.

The 10 MB variant: the same train-free FedAvg of a 10 MB message on both systems, nine client
processes, R rounds (10 by default), plaintext on loopback. The model is 1,250,000 float64
weights and an intercept, starting at zero; every round each client answers with the model
plus Gaussian noise, nothing is evaluated. fedstock's side is tests/bench_fold.py's server
(its coordinator, gRPC service and FedAvg, folded as each update counts, the allocator given
back and the in-flight budget as `python -m server` sets them) and clients; Flower's is its
legacy `start_server`/`start_client` with its FedAvg (tests/flower_job.py). Both rounds are
timed from one round's end (the model aggregated) to the next one's, rounds 2..R; each
server's peak RSS is its VmHWM, read from /proc/<pid>/status once its rounds are done.
`--only 10mb` runs the variant alone, `--only job` the job alone; `make bench-flower` runs both.

Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
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
from common.wire import DEFAULT_RECEIVE_WINDOW_KB
from server.admission import DEFAULT_INFLIGHT_MIB
from tests import bench_fold

JOB = Path(__file__).with_name("flower_job.py")
FLOWER = "Flower 1.42 legacy gRPC"
FEDSTOCK_10MB = "fedstock (bench_fold's server, folded)"


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


def flower_run(python: Path, out: Path, name: str, server: list[str], clients: dict) -> dict:
    """One Flower run: its server with `server` arguments, a client process for each entry of
    `clients` (province: its arguments). Returns the server's round ends, its peak RSS while
    it listens before any client (`idle_mib`, as bench_fold's) and its peak RSS at the end."""
    port = free_port()
    logs = out / f"{name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    # numba's cache beside client/steps.py was written for the module `client.steps`; loaded by
    # its path under another name, its entries name a module Flower's clients cannot import, and
    # every fit failed. Flower's processes compile into a cache of their own, and get one BLAS
    # thread each as fedstock's processes do (LocalFederation), so neither system's clients
    # spin BLAS threads against the other's.
    env = {**os.environ, **SINGLE_THREADED, "NUMBA_CACHE_DIR": str(out / "flower-numba-cache")}

    def spawn(who: str, args: list[str], reports: bool = False) -> subprocess.Popen:
        log = (logs / f"{who}.log").open("w")
        return subprocess.Popen(
            [str(python), str(JOB), *args, "--port", str(port)],
            stdin=subprocess.PIPE if reports else None,
            stdout=subprocess.PIPE if reports else log,
            stderr=log,
            env=env,
            text=True,
        )

    flower = spawn("server", ["server", *server], reports=True)
    wait_for_port(port, flower)
    idle = bench_fold.high_water_mib(flower.pid)
    workers = [spawn(p, args) for p, args in clients.items()]
    try:
        return {
            **bench_fold.read_report(flower, f"Flower's server (logs in {logs})"),
            "idle_mib": idle,
        }
    finally:
        for worker in workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()


def flower_median(python: Path, arrays: Path, out: Path, rounds: int) -> float:
    """The job's median round on Flower, round end to round end (rounds 2..R: the first
    round's start, clients connecting, is not a round)."""
    clients = {p: ["client", "--data", str(arrays / f"{p}.npz")] for p in PROVINCES}
    ends = flower_run(python, out, "flower", ["--rounds", str(rounds)], clients)["round_ends"]
    return bench_fold.median_interval(ends)


def ten_mb(python: Path | None, out: Path, rounds: int, floats: int) -> dict[str, dict]:
    """The 10 MB variant on each system (Flower's left out when `python` is None): median
    round, and the server's peak RSS idle and at the end in MiB."""
    fedstock = bench_fold.run(
        len(PROVINCES),
        rounds,
        floats,
        False,
        False,
        DEFAULT_INFLIGHT_MIB,
        0.0,
        DEFAULT_RECEIVE_WINDOW_KB,
        out / "fold-logs",
    )
    figures = {FEDSTOCK_10MB: fedstock}
    if python is not None:
        seeds = {p: ["echo", "--seed", str(sum(map(ord, p)))] for p in PROVINCES}
        args = ["--rounds", str(rounds), "--floats", str(floats)]
        run = flower_run(python, out, "flower-10mb", args, seeds)
        figures[FLOWER] = {
            "median_round": bench_fold.median_interval(run["round_ends"]),
            "idle_mib": run["idle_mib"],
            "peak_mib": run["peak_mib"],
        }
    return figures


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def print_ten_mb(figures: dict[str, dict], rounds: int, floats: int, began: str) -> None:
    print(
        f"\n10 MB variant: 9 clients, {rounds} rounds, FedAvg of {floats:,} float64 "
        f"({floats * 8 / 1e6:.1f} MB) + an intercept, no training, no evaluation"
    )
    print(f"load average at the start: {began}, at the end: {load()}")
    print(
        f"{'system':<40} {'median round s (end to end)':>28} {'server idle MiB':>16} "
        f"{'server peak RSS MiB':>20}"
    )
    for name, f in figures.items():
        print(
            f"{name:<40} {f['median_round']:>28.4f} {f['idle_mib']:>16.0f} {f['peak_mib']:>20.0f}"
        )
    flower = figures.get(FLOWER)
    if flower:
        ours = figures[FEDSTOCK_10MB]
        print(
            f"ratio fedstock / Flower: round {ours['median_round'] / flower['median_round']:.2f}, "
            f"peak RSS {ours['peak_mib'] / flower['peak_mib']:.2f}"
        )


def job(args: argparse.Namespace) -> None:
    """The lr-sgd job on each of fedstock's transports asked for, then on Flower."""
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
        medians[FLOWER] = flower_median(args.flower_python, arrays, args.out, args.rounds)
    print(f"\n{args.rounds} rounds, 9 clients x {args.rows_per_province:,} rows, train + evaluate")
    print(f"load average at the end: {load()}")
    print(f"{'system':<40} {'median round s (end to end)':>28}")
    for name, median in medians.items():
        print(f"{name:<40} {median:>28.4f}")
    flower = medians.get(FLOWER)
    for name, median in medians.items():
        if flower and name.startswith("fedstock"):
            print(f"ratio {name} / Flower: {median / flower:.2f}")


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
    parser.add_argument(
        "--only",
        choices=("job", "10mb"),
        help="run only the lr-sgd job or only the 10 MB variant (default: both, the job first)",
    )
    parser.add_argument("--rounds-10mb", type=int, default=10, help="the variant's rounds (≥ 2)")
    parser.add_argument(
        "--floats", type=int, default=1_250_000, help="the variant's weights in every message"
    )
    args = parser.parse_args()
    if args.rounds_10mb < 2:
        parser.error("--rounds-10mb must be at least 2: the median is over rounds 2..R")
    if args.floats < 1:
        parser.error("--floats must be at least 1")
    if args.only != "10mb":
        job(args)
    if args.only != "job":
        began = load()
        python = None if args.skip_flower else args.flower_python
        figures = ten_mb(python, args.out, args.rounds_10mb, args.floats)
        print_ten_mb(figures, args.rounds_10mb, args.floats, began)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
