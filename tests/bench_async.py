"""Asynchronous against synchronous rounds with one province ten times slower, on real processes.

Nine client processes train `lr-sgd` for several local epochs a task; one province of median
size runs with `--slowdown 10`. A synchronous round waits for it every time; the asynchronous
mode publishes a version every K updates and weighs stale ones down. For each mode: versions
(rounds) published per minute of training, updates applied per minute, the final MSE over
every province, the slow province's share of the applied updates, and the median staleness.
Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common.launch import LocalFederation
from common.provinces import PROVINCES

SLOW = "beijing"  # of median size: ten times slower, it is the slowest by far


def federate(rounds: int, flags: list[str], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        federation = LocalFederation(
            Path(out),
            "lr-sgd",
            rounds,
            args.rows,
            args.seed,
            server_args=["--poll-seconds", "2", "--local-epochs", str(args.local_epochs), *flags],
        )
        federation.start_server()
        for province in PROVINCES:
            slowdown = ["--slowdown", str(args.slowdown)] if province == SLOW else []
            federation.start_client(province, *slowdown)
        codes = federation.wait(timeout=1800)
        if set(codes.values()) != {0}:
            raise RuntimeError(f"{flags}: processes failed: {codes}")
        return federation.results()


def row(name: str, results: dict[str, Any]) -> dict[str, Any]:
    records, final = results["rounds"], results["final"]
    minutes = final["train_seconds"] / 60
    # A synchronous round applies one update from each of its clients, all fresh.
    updates = [
        u for r in records for u in r.get("updates") or [{"province": p} for p in r["clients"]]
    ]
    return {
        "mode": name,
        "versions": len(records),
        "train_seconds": final["train_seconds"],
        "versions_per_minute": len(records) / minutes,
        "updates_per_minute": len(updates) / minutes,
        "final_mse": final["mse"],
        "slow_share": sum(u["province"] == SLOW for u in updates) / len(updates),
        "median_staleness": statistics.median(u.get("staleness", 0) for u in updates),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m tests.bench_async", description=__doc__
    )
    parser.add_argument("--rows", type=int, default=40_000, help="rows of the synthetic market")
    parser.add_argument("--seed", type=int, default=3, help="seed of the synthetic market")
    parser.add_argument("--local-epochs", type=int, default=20, help="local passes per task")
    parser.add_argument("--slowdown", type=float, default=10, help="the slow province's factor")
    parser.add_argument("--sync-rounds", type=int, default=10)
    parser.add_argument("--async-versions", type=int, default=90)
    parser.add_argument(
        "--buffer-sizes", type=int, nargs="+", default=[3, 6], help="K of each async run"
    )
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    runs = [("sync", args.sync_rounds, [])] + [
        (f"async K={k}", args.async_versions, ["--mode", "async", "--buffer-size", str(k)])
        for k in args.buffer_sizes
    ]
    print(f"lr-sgd, {args.local_epochs} local epochs, {SLOW} {args.slowdown:g}× slower", flush=True)
    rows = []
    for name, rounds, flags in runs:
        rows.append(row(name, federate(rounds, flags, args)))
        r = rows[-1]
        print(
            f"{name:<10} {r['versions']:>3} versions in {r['train_seconds']:6.1f} s: "
            f"{r['versions_per_minute']:6.1f} versions/min, {r['updates_per_minute']:6.0f} "
            f"updates/min, final MSE {r['final_mse']:.6g}, {SLOW}'s share of updates "
            f"{r['slow_share']:.1%}, median staleness {r['median_staleness']:g}",
            flush=True,
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "async.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
