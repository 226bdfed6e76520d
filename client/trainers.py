"""What a province does with its rows for each model: train from the global parameters, predict.

Trainers know scikit-learn and numpy, never gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from client.optim import LinearSGD, local_steps
from common.models import linear
from common.tensors import Arrays
from common.wire import ConfigScalar

Fit = Callable[[np.ndarray, np.ndarray, Arrays | None, Mapping[str, ConfigScalar]], Arrays]
Predict = Callable[[Arrays, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Trainer:
    fit: Fit
    predict: Predict
    # False where the update is not a model (normal-equation sums): no training MSE then.
    update_is_model: bool = True
    # Gradient trainers say how many local steps a round takes them (FedNova needs τ_i).
    local_steps: Callable[[int, Mapping[str, ConfigScalar]], int] | None = None


TRAINERS: dict[str, Trainer] = {
    "lr": Trainer(lambda x, y, _global, _config: linear.fit_weights(x, y), linear.predict),
    "lr-exact": Trainer(
        lambda x, y, _global, _config: linear.normal_equations(x, y),
        linear.predict,
        update_is_model=False,
    ),
    # One trainer per process: the process is the province, and SCAFFOLD's c_i lives in it.
    "lr-sgd": Trainer(
        LinearSGD().fit,
        linear.predict,
        local_steps=local_steps,
    ),
}


def trainer_for(model: str) -> Trainer:
    try:
        return TRAINERS[model]
    except KeyError:
        raise ValueError(
            f"this client cannot train model {model!r}; it knows {', '.join(TRAINERS)}"
        ) from None
