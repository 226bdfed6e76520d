"""Mini-batch gradient steps of a linear model on a squared loss, compiled by numba.

Kept free of the project's other modules so that a benchmark can run the very same local step
inside another framework's client (it needs numpy and numba alone).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Protocol

import numpy as np


class Plan(Protocol):
    """What a round's local training needs to know (client.optim.LocalPlan)."""

    epochs: int
    learning_rate: float
    batch_size: int
    mu: float
    seed: int


def sgd(
    x: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    plan: Plan,
    correction: np.ndarray | None = None,
) -> np.ndarray:
    """Mini-batch SGD on ½·MSE + μ/2·‖w − start‖², plus a constant `correction` to each gradient.

    The steps are the textbook loop over batches in a shuffled order, one step a batch; compiled,
    they read each row where it lies (no gathered copy of the shuffled rows, no design matrix
    with its column of ones) and cost a few nanoseconds a row, where numpy's per-call costs and
    temporaries cost several times more.
    """
    rng = np.random.default_rng(plan.seed)
    pull = plan.mu * start - (0.0 if correction is None else correction)
    x, y = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)
    w = np.array(start, dtype=np.float64)
    epoch = _compiled()
    for _ in range(plan.epochs):
        epoch(x, y, rng.permutation(len(y)), w, plan.batch_size, plan.learning_rate, plan.mu, pull)
    return w


@cache
def _compiled() -> Callable[..., None]:
    """The epoch, compiled once a process (or read from numba's cache beside this file).

    numba costs a process about a quarter of a second to import: only the first fit pays it.
    """
    import numba

    return numba.njit(cache=True)(_epoch)


def _epoch(
    x: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    w: np.ndarray,
    batch: int,
    eta: float,
    mu: float,
    pull: np.ndarray,
) -> None:
    """One epoch in `order`, updating `w` = [coef..., intercept] in place:
    w ← w − η(Rᵀ(Rw − y)/b + μ·w − pull) for each batch R of b rows, the last one maybe shorter.
    """
    n, d = x.shape
    gradient = np.empty(d + 1)
    for begin in range(0, n, batch):
        end = min(begin + batch, n)
        gradient[:] = 0.0
        for k in range(begin, end):
            row = order[k]
            residual = w[d] - y[row]
            for j in range(d):
                residual += x[row, j] * w[j]
            for j in range(d):
                gradient[j] += residual * x[row, j]
            gradient[d] += residual
        size = end - begin
        for j in range(d + 1):
            w[j] -= eta * (gradient[j] / size + mu * w[j] - pull[j])
