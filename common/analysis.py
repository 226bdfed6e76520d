"""The analysis task's wire format, which server and client must agree on.

One ANALYSE task after the last round carries the global model only. For contributions a
province does not score candidate models (a coalition's model, a single province's among them,
would hand it that province's update): it answers with sums over its test rows from which the
server scores any model near the global one itself. A model whose prediction is affine in its
parameters θ predicts p(θ) = p(θ_g) + Φ(θ − θ_g) on the test rows, so its squared error is

    Σ (y − p(θ))² = dᵀ(ΦᵀΦ)d − 2dᵀΦᵀr + rᵀr,   d = θ − θ_g,  r = y − p(θ_g),

a quadratic form in three sums (`GRAM` ΦᵀΦ, `CROSS` Φᵀr, `SQUARE` rᵀr) that add up over the
provinces. θ is the model's weights flattened (common.vectors.flatten), or for an ensemble
the weight of each member in the mean of its members (the global model: 1/M each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.models.checks import UpdateError
from common.settings import TaskSettings
from common.tensors import Arrays


@dataclass(frozen=True)
class AnalysisAsk(TaskSettings):
    """What the analysis task asks of a province (0: not that): the test rows' sums (1, for
    contributions), each feature's permuted MSE so many times, the global model fine-tuned by so
    many passes (or, fitted in closed form, pulled towards it this hard), and the seed of the
    shuffles and of the members it grows. The integer flag is the form the wire always had."""

    analysis_seed: int
    personalise_pull: float
    analysis_score_sums: int = 0
    importance_repeats: int = 0
    personalise_epochs: int = 0


# The sums a province answers with, when asked.
GRAM, CROSS, SQUARE = "score_gram", "score_cross", "score_square"

# Metrics every answer carries: the global model's test MSE, and that of predicting the
# federation's training mean of the target (the empty coalition's model).
GLOBAL_MSE = "global_mse"
MEAN_MSE = "mean_mse"
PERSONAL_MSE = "personal_mse"


def permuted_metric(feature: str, repeat: int) -> str:
    return f"permuted.{feature}.{repeat}"


def score_sums(directions: np.ndarray, residuals: np.ndarray) -> Arrays:
    """ΦᵀΦ, Φᵀr and rᵀr of the test rows, from Φ (rows × parameters) and r (rows)."""
    return {
        GRAM: directions.T @ directions,
        CROSS: directions.T @ residuals,
        SQUARE: np.array(float(residuals @ residuals)),
    }


def check_score_sums(arrays: Arrays, size: int) -> None:
    """Exactly the three sums, for `size` parameters, finite, with rᵀr ≥ 0."""
    shapes = {GRAM: (size, size), CROSS: (size,), SQUARE: ()}
    if set(arrays) != set(shapes):
        raise UpdateError(f"an analysis carries the tensors {sorted(shapes)}, got {sorted(arrays)}")
    for name, shape in shapes.items():
        array = arrays[name]
        if array.dtype != np.float64 or array.shape != shape or not np.isfinite(array).all():
            raise UpdateError(f"{name!r} must be finite float64 of shape {shape}")
    if arrays[SQUARE] < 0:
        raise UpdateError(f"{SQUARE!r} is a sum of squares and cannot be negative")


def squared_error(sums: Arrays, step: np.ndarray) -> float:
    """Σ (y − p(θ))² over the rows `sums` add up, for θ = θ_g + `step`."""
    gram, cross, square = sums[GRAM], sums[CROSS], float(sums[SQUARE])
    return max(float(step @ gram @ step - 2.0 * step @ cross + square), 0.0)
