"""Local differential privacy for histogram trees: what one row can move, and the noise over it.

Under `--privacy dp-local` a province bounds each row's part in every answer before it sums
them: the row's gradient is clipped to [−C, C] (`--dp-clip`) and its Hessian, its weight, to
[0, 1]. A row then adds to one bin of each of the F features in at most one asked node per
tree, so, counting gradients in units of C, it moves one tree's histograms by at most √(2F) in
L2 norm, and the sketch (a count per feature) by √F. Each province adds Gaussian noise of σ
times that reach to every sum it sends: each tree's part of an answer, and each sketch, is one
Gaussian release of noise multiplier σ for a row added or removed — σ/2 for a row replaced,
which is what the run's accountant composes (server/privacy/dp.py). Everything after the noise
(bin edges, splits, leaves) is computed from the noised sums alone.
"""

from __future__ import annotations

import math

import numpy as np

from common.noise import SecureRandom
from common.tensors import Arrays

HESSIAN_BOUND = 1.0
# Summed sketch cells below this many standard deviations of their noise count as empty.
EMPTY_BELOW = 3.0


def bounded(residual: np.ndarray, weights: np.ndarray, clip: float) -> tuple[np.ndarray, ...]:
    """Each row's gradient and Hessian under local DP: the residual clipped to [−clip, clip]
    and the weight to [0, 1] (a row a bootstrap drew twice counts once)."""
    hess = np.minimum(weights, HESSIAN_BOUND)
    return np.clip(residual, -clip, clip) * hess, hess


def reach(n_features: int, clip: float) -> dict[str, float]:
    """How far one row moves each answer tensor's entries in L2 norm: the noise, in units of σ."""
    histogram = math.sqrt(2 * n_features)
    return {
        "sketch": math.sqrt(n_features),
        "grad": histogram * clip,
        "hess": histogram * HESSIAN_BOUND,
    }


def noised(
    answer: Arrays, clip: float, sigma: float, rng: np.random.Generator | SecureRandom
) -> Arrays:
    """`answer` (a sketch, or histograms) with N(0, (σ·reach)²) added to every entry."""
    n_features = answer["sketch"].shape[0] if "sketch" in answer else answer["grad"].shape[1]
    scale = reach(n_features, clip)
    unbounded = sorted(set(answer) - set(scale))
    if unbounded:
        raise ValueError(f"local DP cannot noise {', '.join(unbounded)}: no row bound is known")
    return {
        name: array + rng.normal(0.0, sigma * scale[name], array.shape)
        for name, array in answer.items()
    }


def denoised_sketch(sketch: np.ndarray, sigma: float, parties: int) -> np.ndarray:
    """The summed noised sketch with the cells its noise alone could explain set to zero, so
    the bin edges follow the rows and not the noise of the many empty cells."""
    floor = EMPTY_BELOW * sigma * reach(sketch.shape[0], 1.0)["sketch"] * math.sqrt(parties)
    return np.where(sketch >= floor, sketch, 0.0)
