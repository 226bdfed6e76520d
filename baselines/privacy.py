"""Accuracy against privacy: the federation's MSE under client-level DP at several ε.

Shared by `make reproduce` (LR, as lr-sgd, and SVM under dp-central and dp-local at a few ε,
beside their runs without DP) and `make bench-privacy` (what every --privacy mode costs). Every
point is a real federation, so the clipping, noise and accounting are the server's own. Each
row carries two MSEs: the final model's clear score on the union of the provinces' test rows
(`baselines.clear`, by whoever holds the rows), with the naive forecast's MSE and the skill on
the same rows, and the MSE the run recorded, which under DP is the noisy score DP releases, not
the model's. This module turns results documents into rows, a CSV, a table and the clear MSE/ε
plot.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from baselines import clear
from common import paillier, secagg

# The models swept, each with a clip norm a little above its update norm. DP-FedAvg clips and
# noises gradient steps, so LR is swept as lr-sgd: standardised, from zero weights (today's
# close), it reaches the exact fit in one round, where lr's closed-form weights in price units
# need a clip so wide that the noise swamps them. lr-sgd's steps are small (its whole model has
# norm 0.03 on the default market): at ε = 1 a clip of 1, 0.5 or 0.2 gave MSE 0.83, 0.58 and
# 0.227 (0.2246 without DP), and 0.1 or 0.05 no better than 0.2 within the noise of one run;
# 0.2 keeps room for larger steps on other data, whose clipping would bias the model. The SVM's
# weights are in standard deviations of the target.
CLIPS = {"lr-sgd": 0.2, "svm": 1.0}
# The paper's model each swept model stands for.
PAPER_MODEL = {"lr-sgd": "lr", "svm": "svm"}
EPSILONS = (1.0, 3.0, 10.0)
# The DP modes swept, each with its line in the plot: the server noises the sum, or each
# province noises its own step before sending it.
MODES = {"dp-central": "o-", "dp-local": "s:"}
# (mode, ε) of the sweep: every mode at every ε.
SWEEP = tuple((mode, epsilon) for mode in MODES for epsilon in EPSILONS)
PLAIN = "plain"
COLUMNS = (
    "model",
    "mode",
    "epsilon",
    "clear_mse",
    "naive_mse",
    "clear_skill",
    "test_rows",
    "recorded_mse",
    "recorded_as",
    "seconds_per_round",
    "bytes_per_round",
)
# What the MSE a run records is, by its --privacy mode: under DP each province's MSE, each
# row's squared error clipped to --dp-score-clip B, noised, clamped into [0, B], pooled.
RECORDED_AS = {
    "dp-central": "DP release, noised by the server",
    "dp-local": "DP release, noised by each province",
}
CLEAR = "clear"


def dp_flags(model: str, epsilon: float, mode: str = "dp-central") -> list[str]:
    """Server flags for `mode` calibrated to reach `epsilon` over the run, at the model's clip."""
    return ["--privacy", mode, "--dp-epsilon", f"{epsilon:g}", "--dp-clip", f"{CLIPS[model]:g}"]


def dp_label(epsilon: float, mode: str = "dp-central") -> str:
    return f"{mode} ε={epsilon:g}"


def summarise(
    model: str,
    mode: str,
    results: dict[str, Any],
    folder: Path,
    frames: Mapping[str, pd.DataFrame],
) -> dict[str, Any]:
    """One row from a finished federation (`recorded`), its final model scored in the clear on
    the test rows of `frames` (every province's raw rows), with the naive forecast's MSE and
    the skill on the same rows."""
    scored = clear.score(results, folder, frames)
    pooled = scored.pooled()
    return {
        **recorded(model, mode, results, folder),
        "clear_mse": scored.mse,
        "naive_mse": pooled["naive_mse"],
        "clear_skill": pooled["skill"],
        "test_rows": sum(int(s["n_test"]) for s in scored.per_client.values()),
    }


def recorded(model: str, mode: str, results: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What a finished federation's results document and the model file beside it say: the
    MSE it recorded and what that is, the ε spent, seconds and bytes per round.

    Bytes per round are the tensors only: each client receives the global parameters for
    training and again for evaluation and sends one update (3 × clients × payload), plus secure
    aggregation's signed keys and shares, or HE's ciphertexts and their relay (`he_bytes`); gRPC
    and TLS framing are not counted.
    """
    with np.load(folder / results["final"]["model_file"]) as stored:
        payload = sum(stored[name].nbytes for name in stored.files)
        values = sum(stored[name].size for name in stored.files)
    records = results["rounds"]
    clients = len(records[-1]["clients"])
    config = results["config"]
    extra = 0
    if config.get("privacy") == "secagg":
        k = int(config.get("secagg_neighbours", 0))
        extra = secagg_bytes(clients, _proof_bytes(results, folder), k)
    total = 3 * clients * payload + extra
    if config.get("privacy") == "he":
        public = paillier.read_public_key(Path(config["he_public_key"]), allow_small=True)
        width = paillier.width(public.n)
        total = he_bytes(clients, payload, values, width, _proof_bytes(results, folder))
    return {
        "model": model,
        "mode": mode,
        "recorded_mse": results["final"]["mse"],
        "recorded_as": RECORDED_AS.get(str(config.get("privacy")), CLEAR),
        "seconds_per_round": statistics.median(r["seconds"] for r in records),
        "bytes_per_round": total,
        "epsilon": records[-1].get("privacy", {}).get("epsilon"),
    }


def _proof_bytes(results: dict[str, Any], folder: Path) -> int:
    """What signs one client's keys: a P-256 signature (at most 72 bytes) and its certificate."""
    if results["config"].get("insecure") == "True":
        return 0
    provinces = results["final"]["per_client"]
    pem = sum((folder / "certs" / f"{p}.pem").stat().st_size for p in provinces) // len(provinces)
    return 72 + pem


def secagg_bytes(n: int, proof: int, k: int = 0) -> int:
    """Secure aggregation's own tensors in one round of n clients, up and down, all clients;
    `proof` is the bytes that authenticate one client's keys, k its neighbours (0: all)."""
    index = 8  # one int64 client number (or end offset) beside each relayed item
    others = k if 0 < k < n - 1 else n - 1
    per_client = (
        64
        + proof  # keys up, signed
        + n * (64 + proof + 3 * index)  # everyone's signed keys down
        + others * secagg.SEALED_BYTES  # encrypted shares up, one per neighbour
        + others * (secagg.SEALED_BYTES + index)  # the shares addressed to it down
        + (others + 1) * (secagg.SHARE_BYTES + index)  # unmasking shares up
    )
    return n * per_client


def he_bytes(n: int, payload: int, values: int, width: int, proof: int) -> int:
    """Threshold HE's tensors in one round of n clients, up and down, all clients: the plain
    model down twice (training, evaluation), the encrypted update (its values and the weight,
    `width` bytes each) and its signature up, every client's signed update down in the
    decryption task, and the partial decryption up."""
    update = (values + 1) * width
    return n * (2 * payload + (update + proof) * (n + 1) + update)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The finished rows; ε is `inf` for a run without DP."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            if "failed" not in row:
                epsilon = math.inf if row["epsilon"] is None else row["epsilon"]
                writer.writerow([row[c] if c != "epsilon" else epsilon for c in COLUMNS])
    return path


def plot(rows: Sequence[dict[str, Any]], path: Path, clients: int = 9) -> Path:
    """The final models' clear MSE against ε for each model and DP mode, with each model's run
    without DP (ε = ∞) as the line the curve starts from, and the naive forecast's MSE on that
    run's test rows as the line to beat. The MSEs DP released are in the table, not here."""
    figure, axis = plt.subplots(figsize=(6, 4))
    naive = None
    for k, model in enumerate(sorted({r["model"] for r in rows})):
        done = [r for r in rows if r["model"] == model and "failed" not in r]
        for mode, marker in MODES.items():
            points = sorted(
                (r["epsilon"], r["clear_mse"]) for r in done if r["mode"].startswith(mode)
            )
            if points:
                axis.plot(
                    *zip(*points, strict=True), marker, color=f"C{k}", label=f"{model} {mode}"
                )
        for r in done:
            if r["mode"] == PLAIN:
                axis.axhline(
                    r["clear_mse"], linestyle="--", color=f"C{k}", label=f"{model} no DP (ε=∞)"
                )
                naive = r["naive_mse"] if naive is None else naive
    if naive is not None:
        axis.axhline(naive, linestyle=":", color="grey", label="naive forecast")
    axis.set(xscale="log", yscale="log", xlabel="ε (δ = 1e-5)")
    axis.set_ylabel("clear test MSE of the final model")
    axis.set_title(f"Client-level DP: accuracy against privacy, {clients} provinces")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows as a Markdown table, for reports: the clear score first, the recorded one after."""
    lines = [
        "| model | mode | ε spent | clear MSE | naive MSE | skill | test rows | recorded MSE "
        "| recorded as | s/round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['mode']} | | {r['failed']} | | | | | | |")
            continue
        spent = "∞" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        skill = "" if r["clear_skill"] is None else f"{r['clear_skill']:+.2%}"
        lines.append(
            f"| {r['model']} | {r['mode']} | {spent} | {r['clear_mse']:.4g} | "
            f"{r['naive_mse']:.4g} | {skill} | {r['test_rows']:,} | {r['recorded_mse']:.4g} | "
            f"{r['recorded_as']} | {r['seconds_per_round']:.3g} |"
        )
    return lines
