"""`make bench-privacy`: what each privacy mode costs, on real processes over localhost.

For each model whose updates are weight vectors, one federation per mode: the final MSE, the
median seconds per round, and the tensor bytes per round (`baselines.privacy.recorded` says
what is counted). The MSE is given twice: the final model's, scored in the clear on the union
of the provinces' test rows (this process makes the same synthetic market the clients make),
and the one the run recorded, which under DP is the noisy score DP releases. With --out, also
the rows as JSON and CSV and the clear MSE/ε plot (the plot `make reproduce` draws too).
First, in one process, what secure aggregation costs one client with every pair masked and
with SecAgg+'s sparse graph, as the federation grows. Benchmarks measure and print; they
assert nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from baselines.data import DataOptions, load_frames
from baselines.privacy import CLIPS, plot, summarise, write_csv
from client.he_keys import write_keys
from common import secagg
from common.launch import LocalFederation
from common.registry import MODELS
from tests.bench_scale import measure

Frames = Mapping[str, pd.DataFrame]
MODES: dict[str, list[str]] = {
    "plain": [],
    "dp-central ε=1": ["--privacy", "dp-central", "--dp-epsilon", "1"],
    "dp-central ε=3": ["--privacy", "dp-central", "--dp-epsilon", "3"],
    "dp-central ε=10": ["--privacy", "dp-central", "--dp-epsilon", "10"],
    "dp-local ε=10": ["--privacy", "dp-local", "--dp-epsilon", "10"],
    "he": ["--privacy", "he"],
    "secagg": ["--privacy", "secagg"],
    "secagg k=4": ["--privacy", "secagg", "--secagg-neighbours", "4"],
}


def run(
    model: str,
    mode: str,
    args: argparse.Namespace,
    keys: tuple[dict[str, Path], Path],
    frames: Frames,
) -> dict[str, Any]:
    shares, public = keys
    clip = args.dp_clip or CLIPS[model]
    flags = [*MODES[mode], "--poll-seconds", "2", "--dp-clip", str(clip)]
    with tempfile.TemporaryDirectory() as out:
        federation = LocalFederation(
            Path(out),
            model,
            args.rounds,
            args.rows,
            args.seed,
            server_args=[*flags, "--he-public-key", str(public)],
        )
        federation.start_server()
        for province, share in shares.items():  # each province holds only its own share
            federation.start_client(province, "--he-key", str(share))
        codes = federation.wait(timeout=1800)
        if set(codes.values()) != {0}:
            return {"model": model, "mode": mode, "clip": clip, "failed": codes}
        results = federation.results()
        return {**summarise(model, mode, results, Path(out), frames), "clip": clip}


def protocol_round(n: int, k: int, length: int) -> tuple[float, float, int]:
    """One round of n clients in process, every pair masked (k = 0) or k neighbours each:
    a client's CPU seconds, the server's, and the bytes a client sends."""
    graph = secagg.neighbours(n, k, seed=0) if k else None
    threshold = (k + 1 if k else n) * 2 // 3 + 1
    encoding = secagg.Encoding(1e3, n)
    values = np.random.default_rng(0).normal(size=length)
    started = time.process_time()
    clients = {
        i: secagg.Client(i, encoding, threshold, graph[i] if graph else None)
        for i in range(1, n + 1)
    }
    adverts = {i: c.advertise() for i, c in clients.items()}
    outboxes = {u: c.share(adverts) for u, c in clients.items()}
    masked = {
        v: c.masked_input(values, {u: box[v] for u, box in outboxes.items() if v in box})
        for v, c in clients.items()
    }
    replies = {v: c.unmask(set(masked), set()) for v, c in clients.items()}
    client_seconds = (time.process_time() - started) / n
    started = time.process_time()
    secagg.aggregate(encoding, threshold, adverts, masked, replies, graph)
    server_seconds = time.process_time() - started
    sent = 64 + len(outboxes[1]) * secagg.SEALED_BYTES + 8 * length
    sent += len(replies[1]) * (secagg.SHARE_BYTES + 8)
    return client_seconds, server_seconds, sent


def graph_costs(length: int = 10_000) -> None:
    print(f"secure aggregation, {length:,} weights, in process: every pair against k neighbours")
    print(
        "{:>7} {:>5} {:>12} {:>10} {:>12}".format(
            "clients", "k", "client ms", "server s", "client sends"
        )
    )
    for n in (9, 30, 100):
        for k in (0, 4, 8):
            if k < n - 1:
                client, server, sent = protocol_round(n, k, length)
                shown = k or "all"
                print(f"{n:>7} {shown:>5} {client * 1e3:>12.1f} {server:>10.2f} {sent:>12,}")
    print(flush=True)


def secagg_members(counts: list[int], rounds: int, model: str) -> None:
    """Secure aggregation against no protection over real gRPC with `counts` members each:
    sessions multiplexed into four processes (tests/bench_scale.py), 300 rows a member,
    insecure (no TLS, keys unsigned: the signatures' bytes are not counted). Each secagg row
    also gives its cost over the plain run of as many members, measured one after the other:
    every pair masked, and SecAgg+'s sparse graph of four neighbours each."""
    modes = {
        "plain": (),
        "secagg": ("--privacy", "secagg"),
        "secagg k=4": tuple(MODES["secagg k=4"]),
    }
    rows = {
        (n, mode): measure(n, 4, rounds, 300, 3600, flags, model=model)
        for n in counts
        for mode, flags in modes.items()
    }
    print(f"\nover gRPC on localhost, {model}, 300 rows a member, --insecure")
    header = ("members", "mode", "s/round", "bytes/round", "x plain s", "x plain B")
    header += ("server CPU s/round", "clients CPU s/round", "peak MiB")
    print("{:>7} {:<10} {:>9} {:>12} {:>9} {:>9} {:>18} {:>19} {:>9}".format(*header))
    for (n, mode), row in rows.items():
        plain = rows[n, "plain"]
        print(
            f"{n:>7} {mode:<10} {row['seconds_per_round']:>9.2f} {row['bytes_per_round']:>12,} "
            f"{row['seconds_per_round'] / plain['seconds_per_round']:>9.2f} "
            f"{row['bytes_per_round'] / plain['bytes_per_round']:>9.2f} "
            f"{row['server_cpu_per_round']:>18.3f} {row['clients_cpu_per_round']:>19.3f} "
            f"{row['server_peak_rss_mib']:>9.0f}"
        )
    print(flush=True)


def line(row: dict[str, Any]) -> str:
    if "failed" in row:
        return f"{row['model']:<6} {row['mode']:<16} failed: exit codes {row['failed']}"
    spent = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
    return (
        f"{row['model']:<6} {row['mode']:<16} {row['clear_mse']:>11.5g} "
        f"{row['recorded_mse']:>12.5g} {row['seconds_per_round']:>8.2f} "
        f"{row['bytes_per_round']:>12,} {spent:>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--rows", type=int, default=270_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dp-clip", type=float, help="one clip norm for every model")
    parser.add_argument("--models", nargs="*", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, help="folder for privacy.json, .csv and the plot")
    parser.add_argument(
        "--secagg-members",
        type=int,
        nargs="*",
        default=[],
        help="also secure aggregation over gRPC with this many members each (e.g. 9 50 100)",
    )
    parser.add_argument(
        "--secagg-model", default="lr", choices=list(MODELS), help="the model of those runs"
    )
    args = parser.parse_args()
    graph_costs()
    if args.secagg_members:
        secagg_members(args.secagg_members, args.rounds, args.secagg_model)
    models = [m for m in args.models if m in MODELS]
    clips = ", ".join(f"{m} {args.dp_clip or CLIPS[m]:g}" for m in models)
    print(f"{args.rows:,} rows, 9 client processes, {args.rounds} rounds, DP clip: {clips}")
    header = ("model", "mode", "clear MSE", "recorded MSE", "s/round", "bytes/round", "ε")
    print("{:<6} {:<16} {:>11} {:>12} {:>8} {:>12} {:>6}".format(*header))
    frames = load_frames(DataOptions(rows=args.rows, seed=args.seed))  # the clients' market
    rows = []
    with tempfile.TemporaryDirectory() as keys:
        pair = write_keys(Path(keys), bits=2048)  # one share per province, a majority decrypts
        for model in models:
            for mode in args.modes:
                rows.append(run(model, mode, args, pair, frames))
                print(line(rows[-1]), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "privacy.json").write_text(json.dumps(rows, indent=1))
        write_csv(rows, args.out / "privacy.csv")
        plot(rows, args.out / "mse-epsilon.png")
        print(f"\n{args.out}: privacy.json, privacy.csv, mse-epsilon.png")


if __name__ == "__main__":
    main()
