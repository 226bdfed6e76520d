"""`make bench-privacy`: what each privacy mode costs, on real processes over localhost.

For each model whose updates are weight vectors, one federation per mode: the final MSE, the
median seconds per round, and the tensor bytes per round (each client receives the global
parameters for training and again for evaluation and sends one update: 3 × clients × payload,
plus secure aggregation's keys and shares; gRPC and TLS framing not counted). With --out, also
the rows as JSON and the MSE/ε plot. Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from client.he_keys import write_keys
from common import secagg
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
# Clip norms near each model's update norm: LR's weights are in price units, the SVM's in
# standard deviations of the target.
CLIPS = {"lr": 10.0, "svm": 1.0}


def run(model: str, mode: str, args: argparse.Namespace, keys: tuple[Path, Path]) -> dict[str, Any]:
    secret, public = keys
    clip = args.dp_clip or CLIPS[model]
    flags = [*MODES[mode], "--poll-seconds", "2", "--dp-clip", str(clip)]
    row: dict[str, Any] = {"model": model, "mode": mode, "clip": clip}
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
            return {**row, "failed": codes}
        results = federation.results()
        with np.load(Path(out) / results["final"]["model_file"]) as stored:
            payload = sum(stored[name].nbytes for name in stored.files)
    records = results["rounds"]
    clients = len(records[-1]["clients"])
    return {
        **row,
        "mse": results["final"]["mse"],
        "seconds_per_round": statistics.median(r["seconds"] for r in records),
        "bytes_per_round": 3 * clients * payload
        + (secagg_bytes(clients) if mode == "secagg" else 0),
        "epsilon": records[-1].get("privacy", {}).get("epsilon"),
    }


def secagg_bytes(n: int) -> int:
    """Secure aggregation's own tensors in one round of n clients, up and down, all clients."""
    index = 8  # one int64 client number beside each relayed item
    per_client = (
        64  # keys up
        + n * (64 + index)  # everyone's keys down
        + n * secagg.SEALED_BYTES  # encrypted shares up
        + (n - 1) * (secagg.SEALED_BYTES + index)  # the shares addressed to it down
        + n * (secagg.SHARE_BYTES + index)  # unmasking shares up
    )
    return n * per_client


def line(row: dict[str, Any]) -> str:
    if "failed" in row:
        return f"{row['model']:<5} {row['mode']:<16} failed: exit codes {row['failed']}"
    spent = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
    return (
        f"{row['model']:<5} {row['mode']:<16} {row['mse']:>11.5g} "
        f"{row['seconds_per_round']:>8.2f} {row['bytes_per_round']:>12,} {spent:>6}"
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """MSE against ε for each model and DP mode, with the plain run as a line to beat."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for k, model in enumerate(sorted({r["model"] for r in rows})):
        done = [r for r in rows if r["model"] == model and "mse" in r]
        for mode, marker in (("dp-central", "o-"), ("dp-local", "s:")):
            points = sorted((r["epsilon"], r["mse"]) for r in done if r["mode"].startswith(mode))
            if points:
                axis.plot(
                    *zip(*points, strict=True), marker, color=f"C{k}", label=f"{model} {mode}"
                )
        for r in done:
            if r["mode"] == "plain":
                axis.axhline(r["mse"], linestyle="--", color=f"C{k}", label=f"{model} no DP")
    axis.set(xscale="log", yscale="log", xlabel="ε (δ = 1e-5)", ylabel="test MSE")
    axis.set_title("Client-level DP: accuracy against privacy, 9 provinces")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=270_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dp-clip", type=float, help="one clip norm for every model")
    parser.add_argument("--models", nargs="*", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, help="folder for privacy.json and mse-epsilon.png")
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
        plot(rows, args.out / "mse-epsilon.png")
        print(f"\n{args.out / 'privacy.json'}, {args.out / 'mse-epsilon.png'}")


if __name__ == "__main__":
    main()
