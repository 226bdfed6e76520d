"""The models a federation can train, by the name given to `--model`."""

from __future__ import annotations

from collections.abc import Callable

from common.models import linear
from server.strategy import ExactLinear, FedAvg, Strategy

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "lr": lambda: FedAvg({"model": "lr"}, check=linear.check_weights),
    "lr-exact": lambda: ExactLinear({"model": "lr-exact"}),
    "lr-sgd": lambda: FedAvg(
        {"model": "lr-sgd", "local_epochs": 1, "learning_rate": 0.05, "batch_size": 64},
        check=linear.check_weights,
    ),
}


def build_strategy(model: str) -> Strategy:
    try:
        return STRATEGIES[model]()
    except KeyError:
        raise ValueError(
            f"unknown model {model!r}; expected one of: {', '.join(STRATEGIES)}"
        ) from None
