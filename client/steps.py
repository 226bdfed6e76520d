"""Mini-batch gradient steps of a linear model on a squared loss, in numpy alone.

Kept free of the project's other modules so that a benchmark can run the very same local step
inside another framework's client.
"""

from __future__ import annotations

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

    Each step on a squared loss is an affine map of the weights, w ← A_k·w + c_k, so the batches
    of a stretch of rows become their maps in one vectorised pass, composed pairwise in
    ⌈log₂ batches⌉ batched products: the same steps in the same order as a loop over batches,
    rounded differently only in the last digits, without a Python iteration per batch.
    """
    design = np.column_stack([x, np.ones(len(x))])
    rng = np.random.default_rng(plan.seed)
    pull = plan.mu * start - (0.0 if correction is None else correction)
    stretch = plan.batch_size * _BATCHES_PER_STRETCH
    w = start.copy()
    for _ in range(plan.epochs):
        order = rng.permutation(len(y))
        for begin in range(0, len(y), stretch):
            rows = order[begin : begin + stretch]
            maps, shifts = _batch_maps(design.take(rows, axis=0), y.take(rows), plan, pull)
            w = _compose(maps, shifts) @ np.append(w, 1.0)
    return w


# Rows gathered at once: enough batches to amortise numpy's calls, few enough to stay in cache.
_BATCHES_PER_STRETCH = 256


def _batch_maps(
    rows: np.ndarray, targets: np.ndarray, plan: Plan, pull: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each batch's step as w ← A·w + c: A = I − η(RᵀR/b + μI), c = η(Rᵀy/b + μ·start − corr)."""
    size, batch = rows.shape[1], plan.batch_size
    full = len(targets) // batch * batch
    blocks = rows[:full].reshape(-1, batch, size)
    across = blocks.transpose(0, 2, 1)
    grams = [across @ blocks / batch]
    moments = [(across @ targets[:full].reshape(-1, batch, 1))[..., 0] / batch]
    if full < len(targets):  # the epoch's last, shorter batch
        tail, tail_y = rows[full:], targets[full:]
        grams.append((tail.T @ tail / len(tail))[None])
        moments.append((tail.T @ tail_y / len(tail))[None])
    eta, identity = plan.learning_rate, np.eye(size)
    maps = identity - eta * (np.concatenate(grams) + plan.mu * identity)
    shifts = eta * (np.concatenate(moments) + pull)
    return maps, shifts


def _compose(maps: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """The affine maps applied first to last, as one matrix [A | c] (size × size+1)."""
    while len(maps) > 1:
        pairs = len(maps) // 2 * 2
        earlier, later = maps[0:pairs:2], maps[1:pairs:2]
        merged = np.matmul(later, earlier)
        moved = (later @ shifts[0:pairs:2, :, None])[..., 0] + shifts[1:pairs:2]
        maps = np.concatenate([merged, maps[pairs:]])  # an odd last map waits for the next pass
        shifts = np.concatenate([moved, shifts[pairs:]])
    return np.column_stack([maps[0], shifts[0]])
