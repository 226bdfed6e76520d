"""`make bench-privacy`: what each privacy mode costs, on real processes over localhost.

For each model whose updates are weight vectors, one federation per mode: the final MSE, the
median seconds per round, and the tensor bytes per round (`baselines.privacy.summarise` says
what is counted). With --out, also the rows as JSON and CSV and the MSE/ε plot (the plot
`make reproduce` draws too). Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from baselines.privacy import CLIPS, plot, summarise, write_csv
from client.he_keys import write_keys
from server.localrun import LocalFederation
from server.models import STRATEGIES

MODES: dict[str, list[str]] = {
    "plain": [],
    "dp-central ε=1": ["--privacy", "dp-central", "--dp-epsilon", "1"],
    "dp-central ε=3": ["--privacy", "dp-central", "--dp-epsilon", "3"],
    "dp-central ε=10": ["--privacy", "dp-central", "--dp-epsilon", "10"],
    "dp-local ε=10": ["--privacy", "dp-local", "--dp-epsilon", "10"],
    "he": ["--privacy", "he"],
    "secagg": ["--privacy", "secagg"],
}


def run(model: str, mode: str, args: argparse.Namespace, keys: tuple[Path, Path]) -> dict[str, Any]:
    secret, public = keys
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
            client_args=["--he-key", str(secret)],
        )
        federation.start()
        codes = federation.wait(timeout=1800)
        if set(codes.values()) != {0}:
            return {"model": model, "mode": mode, "clip": clip, "failed": codes}
        return {**summarise(model, mode, federation.results(), Path(out)), "clip": clip}


def line(row: dict[str, Any]) -> str:
    if "failed" in row:
        return f"{row['model']:<5} {row['mode']:<16} failed: exit codes {row['failed']}"
    spent = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
    return (
        f"{row['model']:<5} {row['mode']:<16} {row['mse']:>11.5g} "
        f"{row['seconds_per_round']:>8.2f} {row['bytes_per_round']:>12,} {spent:>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=270_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dp-clip", type=float, help="one clip norm for every model")
    parser.add_argument("--models", nargs="*", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, help="folder for privacy.json, .csv and the plot")
    args = parser.parse_args()
    models = [m for m in args.models if m in STRATEGIES]
    clips = ", ".join(f"{m} {args.dp_clip or CLIPS[m]:g}" for m in models)
    print(f"{args.rows:,} rows, 9 client processes, {args.rounds} rounds, DP clip: {clips}")
    header = ("model", "mode", "MSE", "s/round", "bytes/round", "ε")
    print("{:<5} {:<16} {:>11} {:>8} {:>12} {:>6}".format(*header))
    rows = []
    with tempfile.TemporaryDirectory() as keys:
        pair = write_keys(Path(keys), bits=2048)
        for model in models:
            for mode in args.modes:
                rows.append(run(model, mode, args, pair))
                print(line(rows[-1]), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "privacy.json").write_text(json.dumps(rows, indent=1))
        write_csv(rows, args.out / "privacy.csv")
        plot(rows, args.out / "mse-epsilon.png")
        print(f"\n{args.out}: privacy.json, privacy.csv, mse-epsilon.png")


if __name__ == "__main__":
    main()
