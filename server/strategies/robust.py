"""Ways to combine the clients' steps into one: the weighted mean, or rules a few liars cannot move.

Each combiner takes the steps as rows of a matrix (one per client) with their sample weights and
returns one step. The mean follows any single client as far as it likes; the coordinate-wise
median and trimmed mean ignore extreme values per coordinate; Krum keeps the step (Multi-Krum:
the steps) closest to its neighbours, so an update far from the honest crowd is never chosen.
Robust rules weigh clients equally: a liar could claim any number of samples.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

Combiner = Callable[[np.ndarray, np.ndarray], np.ndarray]

AGGREGATIONS = ("mean", "median", "trimmed-mean", "krum", "multi-krum")


def mean(steps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return weights @ steps / weights.sum()


def median(steps: np.ndarray, _weights: np.ndarray) -> np.ndarray:
    return np.median(steps, axis=0)


def trimmed_mean(steps: np.ndarray, _weights: np.ndarray, fraction: float) -> np.ndarray:
    """Per coordinate, the mean after dropping the `fraction` largest and smallest values."""
    cut = int(fraction * len(steps))
    if 2 * cut >= len(steps):
        raise ValueError(f"trimming {cut} from each end leaves none of {len(steps)} updates")
    ordered = np.sort(steps, axis=0)
    return ordered[cut : len(steps) - cut].mean(axis=0)


def krum_scores(steps: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al.: each step's summed squared distance to its n − f − 2 nearest others."""
    n = len(steps)
    neighbours = n - f - 2
    if neighbours < 1:
        raise ValueError(f"Krum needs more than f + 2 updates; got {n} with f = {f}")
    distances = np.sum((steps[:, None, :] - steps[None, :, :]) ** 2, axis=-1)
    nearest = np.sort(distances, axis=1)[:, 1 : neighbours + 1]  # column 0 is the step itself
    return nearest.sum(axis=1)


def multi_krum(steps: np.ndarray, _weights: np.ndarray, f: int, keep: int) -> np.ndarray:
    """The mean of the `keep` steps with the lowest Krum scores (keep = 1 is Krum)."""
    chosen = np.argsort(krum_scores(steps, f), kind="stable")[:keep]
    return steps[chosen].mean(axis=0)


def combiner(name: str, trim_fraction: float = 0.25, krum_f: int = 2) -> Combiner:
    """The combiner `--aggregation name`; Multi-Krum averages the n − f best-scored steps."""
    if name == "mean":
        return mean
    if name == "median":
        return median
    if name == "trimmed-mean":
        return partial(trimmed_mean, fraction=trim_fraction)
    if name == "krum":
        return partial(multi_krum, f=krum_f, keep=1)
    if name == "multi-krum":
        return lambda steps, weights: multi_krum(steps, weights, krum_f, len(steps) - krum_f)
    raise ValueError(f"unknown aggregation {name!r}; expected one of: {', '.join(AGGREGATIONS)}")
