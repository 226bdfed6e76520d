"""Local training by mini-batch gradient steps that start from the global weights.

A closed-form fit ignores where the federation stands; gradient steps do not, which is what
FedProx (a pull back towards the global weights), SCAFFOLD (a drift correction) and FedNova
(normalising by the number of steps) reason about. The model is linear, as a flat vector
[coef..., intercept], and the loss half the mean squared error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.scaffold import CONTROL, CONTROL_DELTA
from common.tensors import Arrays
from common.wire import ConfigScalar


@dataclass(frozen=True)
class LocalPlan:
    """How a province trains in one round, as the server's task config says."""

    epochs: int
    learning_rate: float
    batch_size: int
    mu: float
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, ConfigScalar]) -> LocalPlan:
        return cls(
            epochs=int(config["local_epochs"]),
            learning_rate=float(config["learning_rate"]),
            batch_size=int(config["batch_size"]),
            mu=float(config.get("mu", 0.0)),
            seed=int(config.get("sgd_seed", config.get("round", 0))),
        )

    def steps(self, n_rows: int) -> int:
        return self.epochs * math.ceil(n_rows / self.batch_size)


def local_steps(n_rows: int, config: Mapping[str, ConfigScalar]) -> int:
    """τ_i, the gradient steps a province takes in a round: FedNova weighs updates by it."""
    return LocalPlan.from_config(config).steps(n_rows)


def sgd(
    x: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    plan: LocalPlan,
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
    rows: np.ndarray, targets: np.ndarray, plan: LocalPlan, pull: np.ndarray
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


def _vector(weights: Arrays) -> np.ndarray:
    return np.append(np.ravel(weights["coef"]), weights["intercept"])


class LinearSGD:
    """A province's gradient trainer; it keeps its SCAFFOLD control variate c_i across rounds."""

    def __init__(self) -> None:
        self.control: np.ndarray | None = None

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        global_arrays: Arrays | None,
        config: Mapping[str, ConfigScalar],
    ) -> Arrays:
        plan = LocalPlan.from_config(config)
        size = x.shape[1] + 1
        # Round one starts where the server steps from: zero, the standardised target's mean.
        start = np.zeros(size) if global_arrays is None else _vector(global_arrays)
        server_control = (global_arrays or {}).get(CONTROL)
        if server_control is None:
            w = sgd(x, y, start, plan)
            return {"coef": w[:-1].copy(), "intercept": np.asarray(w[-1])}
        if self.control is None or len(self.control) != size:
            self.control = np.zeros(size)
        mine = self.control
        w = sgd(x, y, start, plan, correction=np.asarray(server_control) - mine)
        # Karimireddy et al.'s option II: c_i⁺ = c_i − c + (x − y_i) / (K·η).
        updated = mine - server_control + (start - w) / (plan.steps(len(y)) * plan.learning_rate)
        self.control = updated
        return {
            "coef": w[:-1].copy(),
            "intercept": np.asarray(w[-1]),
            CONTROL_DELTA: updated - mine,
        }
