"""A forecast's scores beside the forecasts anyone could make without a model.

An MSE alone says nothing: on daily bars "tomorrow's price = today's close" is hard to beat.
Each province scores its own test rows (`scores`): the model's MSE, MAE and directional accuracy
and, on the same rows, the MSE of the naive forecasts and, where the data knows it, of the
generator's oracle. These are means over the province's rows, so the server pools them by test
rows exactly as it pools the MSE (`pooled`) and derives skill from the pooled means (`derived`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# A synthetic market's own expectation of the next trading day's average price: a column kept
# after the raw ones when a frame has it (common/data/schema.py), for scoring only. Defined
# here, not with the schema, so that scoring needs none of the data loaders (nor pandas).
ORACLE = "oracle"

# The naive forecasts, each a column of reference values for the test rows (common.preprocess).
PERSISTENCE = "persistence"  # the target's own quantity today
LAST_CLOSE = "last_close"  # today's close
NAIVE = (PERSISTENCE, LAST_CLOSE)  # beside ORACLE, a synthetic market's expectation of it
# A training outcome's MSE on the province's own training rows, a score of its own.
TRAIN_MSE = "train_mse"


# Means over a province's test rows, which the server pools weighted by its test rows.
MEANS = ("mse", "mae", "direction", *(f"{name}_mse" for name in (*NAIVE, ORACLE)))


def without_train_mse(metrics: Mapping[str, float]) -> dict[str, float]:
    """A training outcome's metrics without the training MSE, a score no noise covers: what
    a province under a privacy mode sends, and what central DP's server keeps."""
    return {k: v for k, v in metrics.items() if k != TRAIN_MSE}


def mse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """mean((prediction − truth)²), squared in place: one array of the rows a call, not two."""
    error = prediction - truth
    np.square(error, out=error)
    return float(np.mean(error))


@dataclass(frozen=True)
class Baseline:
    """What a province's scores take from its test rows alone, the same whatever the model: the
    sign of each row's true move from persistence (None without it) and each reference's MSE.
    A province derives it once for rows that do not change (client/local.py)."""

    moves: np.ndarray | None
    mses: dict[str, float]


def baseline(truth: np.ndarray, reference: Mapping[str, np.ndarray]) -> Baseline:
    """The Baseline of these test rows and references."""
    today = reference.get(PERSISTENCE)
    moves = None if today is None else np.sign(truth - today)
    if moves is not None:  # kept for rounds to come: no one may change it
        moves.flags.writeable = False
    return Baseline(
        moves, {f"{name}_mse": mse(values, truth) for name, values in reference.items()}
    )


def scores(
    prediction: np.ndarray,
    truth: np.ndarray,
    reference: Mapping[str, np.ndarray],
    kept: Baseline | None = None,
) -> dict[str, float]:
    """The model's MSE and MAE, the share of rows whose move it calls the right way (the sign of
    prediction − persistence against the sign of truth − persistence), and each reference's MSE;
    `kept`, the rows' Baseline if already derived."""
    base = kept or baseline(truth, reference)
    metrics = {"mse": mse(prediction, truth), "mae": float(np.mean(np.abs(prediction - truth)))}
    if base.moves is not None:
        called = np.sign(prediction - reference[PERSISTENCE]) == base.moves
        metrics["direction"] = float(np.mean(called))
    return metrics | base.mses


def clipped_mse(prediction: np.ndarray, truth: np.ndarray, bound: float) -> dict[str, float]:
    """The MSE with each row's squared error clipped to `bound`: the one score local DP releases
    (the evaluation task carries the bound, common.protection.DPScoring), so that replacing all
    of a province's rows moves it by `bound` at most."""
    return {"mse": float(np.mean(np.minimum((prediction - truth) ** 2, bound)))}


def noised_mse(mse: float, bound: float, scale: float, rng: Any) -> float:
    """A clipped MSE as DP releases it: taken into [0, `bound`] (so that its sensitivity is
    `bound` whoever clipped it), plus N(0, `scale`²), clamped into [0, `bound`] again (free:
    post-processing). `rng` draws the noise (`normal(loc, scale)`)."""
    noisy = min(max(float(mse), 0.0), bound) + float(rng.normal(0.0, scale))
    return min(max(noisy, 0.0), bound)


# Under an aggregating privacy mode a province's scores leave as sums over its test rows, which
# add up over the provinces: each mean times the rows, and the rows behind each mean (0 where
# the province did not score it), in the order of MEANS.
SUMS, ROWS = "score_sums", "score_rows"


def as_sums(metrics: Mapping[str, float], n_test: int) -> dict[str, np.ndarray]:
    """A province's means as the sums over its `n_test` rows that the federation adds up."""
    present = [name in metrics for name in MEANS]
    return {
        SUMS: np.array(
            [metrics[m] * n_test if p else 0.0 for m, p in zip(MEANS, present, strict=True)]
        ),
        ROWS: np.array([float(n_test) if p else 0.0 for p in present]),
    }


def from_sums(sums: Mapping[str, np.ndarray]) -> tuple[dict[str, float], int]:
    """The federation's means from its summed sums (those every row has), and its test rows."""
    rows = np.rint(sums[ROWS]).astype(np.int64)
    total = int(rows.max()) if len(rows) else 0
    means = {
        name: float(s / total)
        for name, s, n in zip(MEANS, sums[SUMS], rows, strict=True)
        if total > 0 and n == total
    }
    return means, total


def derived(means: Mapping[str, float]) -> dict[str, float | bool | None]:
    """The naive MSE (the better naive forecast), skill = 1 − MSE/naive, whether the model beats
    the naive forecast and, with an oracle, the share of the learnable signal the model found:
    (naive − MSE) / (naive − oracle). None where a ratio has no meaning (a zero denominator)."""
    naive = [means[f"{name}_mse"] for name in NAIVE if f"{name}_mse" in means]
    if not naive:
        return {}
    best, mse = min(naive), means["mse"]
    out: dict[str, float | bool | None] = {
        "naive_mse": best,
        "skill": 1.0 - mse / best if best > 0 else None,
        "beats_naive": mse < best,
    }
    if f"{ORACLE}_mse" in means:
        learnable = best - means[f"{ORACLE}_mse"]
        out["achieved_skill"] = (best - mse) / learnable if learnable > 0 else None
    return out


def province(metrics: Mapping[str, float], n_test: int) -> dict[str, float | bool | None]:
    """One province's record: its means, its test rows, and what they imply."""
    means = {name: float(metrics[name]) for name in MEANS if name in metrics}
    return {**means, "n_test": n_test, **derived(means)}


def pooled(per_client: Mapping[str, Mapping[str, float | bool | None]]) -> dict[str, float | None]:
    """The federation's means over every test row, and what they imply; only the means every
    province reported (a run scored without references has none)."""
    records = list(per_client.values())
    total = sum(record["n_test"] for record in records)
    if not records or total <= 0:
        return {}
    shared = [name for name in MEANS if all(name in record for record in records)]
    means = {
        name: sum(record[name] * record["n_test"] for record in records) / total for name in shared
    }
    return {**means, **derived(means)} if "mse" in means else {}


def verdict(final: Mapping[str, float | bool | None]) -> str | None:
    """One plain sentence: does the model beat the naive forecast, and by how much."""
    if "naive_mse" not in final:
        return None
    skill = final.get("skill")
    shown = "n/a" if skill is None else f"{skill:+.2%}"
    if final.get("beats_naive"):
        line = f"the model beats the naive forecast: skill {shown}"
    else:
        line = f"the model does NOT beat the naive forecast (no skill: {shown})"
    achieved = final.get("achieved_skill")
    if achieved is not None:
        line += f"; it found {achieved:.1%} of the signal the oracle finds"
    return line


def score_table(final: dict[str, Any]) -> list[str]:
    """MSE per province and overall beside the naive forecast on the same rows, and the verdict.

    Columns a run did not score (no naive forecasts, no oracle) are left out.
    """
    rows = [*final["per_client"].items(), ("overall", final)]
    columns = [
        (name, heading, form)
        for name, heading, form in SCORE_COLUMNS
        if name == "mse" or any(name in score for _, score in rows)
    ]
    width = max(len(p) for p in [*final["per_client"], "province"])
    total = sum(score["n_test"] for score in final["per_client"].values())
    lines = [
        f"{'province':<{width}}  {'test rows':>10}" + "".join(f"  {h:>12}" for _, h, _ in columns)
    ]
    for name, score in rows:
        n_test = score["n_test"] if name != "overall" else total
        cells = "".join(
            f"  {'hidden' if 'hidden' in score else _cell(score.get(key), form):>12}"
            for key, _, form in columns
        )
        lines.append(f"{name:<{width}}  {n_test:>10}{cells}")
    verdict_line = verdict(final)
    return lines + ([verdict_line] if verdict_line else [])


# (results field, column heading, number format) of the score table.
SCORE_COLUMNS = (
    ("mse", "MSE", ".6g"),
    ("naive_mse", "naive MSE", ".6g"),
    ("skill", "skill", "+.2%"),
    ("oracle_mse", "oracle MSE", ".6g"),
    ("achieved_skill", "achieved", ".1%"),
    ("mae", "MAE", ".4g"),
    ("direction", "direction", ".1%"),
)


def _cell(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)
