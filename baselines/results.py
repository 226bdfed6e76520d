"""Scores and results files of the server's shape, so one reader serves every framework.

The overall MSE is the server's: each province's test MSE weighted by its test rows, in the
units of the forecast quantity, computed by the same `Evaluation` (common/scores.py), with the
same naive baselines beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from baselines.data import DataOptions
from common import forecast, quantity
from common.crossval import TimeFolds
from common.files import write_atomically
from common.preprocess import Split
from common.scores import Evaluation


def scores(prediction: np.ndarray, split: Split) -> dict[str, float]:
    """A province's test scores as a federation's client computes them, naive forecasts beside."""
    return forecast.scores(prediction, split.y_test, split.reference_test)


def score_splits(
    predict: Callable[[np.ndarray], np.ndarray], splits: Mapping[str, Split]
) -> Evaluation:
    """Each split's test rows forecast by `predict` (the split's raw feature rows in) and
    scored as its province would score them, pooled as the server pools them."""
    return evaluation(
        (name, scores(predict(s.x_test), s), len(s.y_test))
        for name, s in splits.items()
        if len(s.y_test)
    )


def cross_validated(folds: list[Evaluation], by_time: TimeFolds | None) -> dict[str, Any]:
    """Each fold's pooled score as the federation records its model selection (one candidate:
    the flags' setting), so a baseline's `model_selection` reads like the server's."""
    rows = [sum(int(c["n_test"]) for c in fold.per_client.values()) for fold in folds]
    candidate = {
        "params": {},
        "cv_mse": sum(f.mse * n for f, n in zip(folds, rows, strict=True)) / sum(rows),
        "fold_mse": [f.mse for f in folds],
    }
    kind = {"kind": "time", "embargo_days": by_time.embargo} if by_time else {"kind": "random"}
    return {"folds": len(folds), "grid": {}, "candidates": [candidate], **kind, "best": candidate}


def evaluation(scored: Iterable[tuple[str, Mapping[str, float], int]]) -> Evaluation:
    """From (province, test scores, test rows) to the overall and per-province figures."""
    evaluated = Evaluation.from_scores(scored)
    if evaluated is None:
        raise ValueError("no test rows to evaluate on")
    return evaluated


def record(
    model: str,
    framework: str,
    data: DataOptions,
    params: Mapping[str, Any],
    scored: Evaluation,
    train_rows: Mapping[str, int],
    timings: Mapping[str, float],
    train_seconds: float,
) -> dict[str, Any]:
    """A results document: the server's fields (model, setting, final) plus what this run was."""
    return {
        "model": model,
        "framework": framework,
        "setting": data.setting,
        "forecast": quantity.record(data.forecast),
        "data": asdict(data),
        "split": data.split(),
        "params": dict(params),
        "statistics": {"rows": sum(train_rows.values()), "train_samples": dict(train_rows)},
        "rounds": [],
        "final": {
            **forecast.pooled(scored.per_client),
            "mse": scored.mse,
            "clients": len(scored.per_client),
            "per_client": scored.per_client,
            "train_seconds": train_seconds,
            "timings": dict(timings),
        },
    }


def write(path: Path, results: dict[str, Any]) -> None:
    """Atomically, as the server writes its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    whole = {"rounds": [], "final": None, **results}
    write_atomically(path, json.dumps(whole, allow_nan=False) + "\n")


def summary(results: dict[str, Any]) -> str:
    """MSE per province and overall, then the timings: what a person running a job wants."""
    final = results["final"]
    lines = [
        f"{results['framework']} {results['model']}, parameters {results['params'] or 'none'}",
        quantity.label(quantity.of(results)),
        *forecast.score_table(final),
        *_selection(results.get("model_selection")),
        f"training seconds: {final['train_seconds']:.2f}",
        "timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in final["timings"].items()),
    ]
    return "\n".join(lines)


def _selection(selection: dict[str, Any] | None) -> list[str]:
    """The cross-validated MSE, when the job cross-validated first."""
    if not selection:
        return []
    folds = f"{selection['folds']} {selection['kind']} folds"
    return [f"cross-validated MSE ({folds}): {selection['best']['cv_mse']:.6g}"]
