"""Local training by mini-batch gradient steps that start from the global weights.

A closed-form fit ignores where the federation stands; gradient steps do not, which is what
FedProx (a pull back towards the global weights), SCAFFOLD (a drift correction) and FedNova
(normalising by the number of steps) reason about. The model is linear, as a flat vector
[coef..., intercept], and the loss half the mean squared error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from client.groups import TaskGroups
from client.steps import sgd
from common.model_settings import LocalTraining, Shuffle
from common.scaffold import CONTROL, CONTROL_DELTA
from common.tensors import Arrays


@dataclass(frozen=True)
class LocalPlan:
    """How a province trains in one round, as the server's task config says."""

    epochs: int
    learning_rate: float
    batch_size: int
    mu: float
    seed: int

    @classmethod
    def of(cls, groups: TaskGroups) -> LocalPlan:
        training = groups.need(LocalTraining)
        seed = groups.need(Shuffle).sgd_seed
        number = groups.number  # a task without a round: the first order
        return cls(
            epochs=training.local_epochs,
            learning_rate=training.learning_rate,
            batch_size=training.batch_size,
            mu=training.mu or 0.0,
            seed=(number.round if number else 0) if seed is None else seed,
        )

    def steps(self, n_rows: int) -> int:
        return self.epochs * math.ceil(n_rows / self.batch_size)


def local_steps(n_rows: int, groups: TaskGroups) -> int:
    """τ_i, the gradient steps a province takes in a round: FedNova weighs updates by it."""
    return LocalPlan.of(groups).steps(n_rows)


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
        groups: TaskGroups,
    ) -> Arrays:
        plan = LocalPlan.of(groups)
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
