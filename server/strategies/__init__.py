"""Federated algorithms beyond plain FedAvg, chosen by `--strategy` and `--aggregation`.

They apply to models whose updates are weight vectors averaged by FedAvg; FedProx, SCAFFOLD,
FedNova and q-FedAvg need clients that train by gradient steps (`--model lr-sgd`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from common.model_settings import LocalTraining
from common.wire import ConfigScalar
from server.strategies.compressed import Compressed
from server.strategies.federated import FedAdam, FedAvgM, Federated, FedNova, QFedAvg, Scaffold
from server.strategies.robust import combiner
from server.strategy import Strategy

if TYPE_CHECKING:
    from server.config import StrategySettings

STRATEGY_NAMES = ("fedavg", "fedprox", "fednova", "scaffold", "qfedavg", "fedadam", "fedavgm")
# The server learning rate each optimiser starts from unless --server-lr says otherwise:
# FedAdam moves every coordinate by about this much a round, the others scale the mean step.
SERVER_LR = {"fedadam": 0.05}


def wrap(strategy: Strategy, asked: StrategySettings) -> Strategy:
    """`strategy` as the algorithm and compression `asked` names."""
    algorithm = _algorithm(strategy, asked)
    if asked.compression == "none":
        return algorithm
    return Compressed(algorithm, asked.compression, asked.topk_fraction)


def _algorithm(strategy: Strategy, asked: StrategySettings) -> Strategy:
    """`strategy` as the algorithm `asked` names; plain FedAvg is returned as it is.

    Whether the model can take the algorithm is the configuration's to say (its capabilities
    are in common/registry.py), before any strategy is built.
    """
    if asked.strategy == "fedavg" and asked.aggregation == "mean" and not asked.local_training():
        return strategy
    local = _local_training(strategy, asked)
    combine = combiner(asked.aggregation, asked.trim_fraction, asked.krum_f)
    lr = asked.server_lr or SERVER_LR.get(asked.strategy, 1.0)
    match asked.strategy:
        case "fedprox":
            return Federated(strategy, _local_training(strategy, asked, mu=asked.mu), combine)
        case "fednova":
            return FedNova(strategy, local, combine)
        case "scaffold":
            return Scaffold(strategy, local, combine, lr=lr)
        case "qfedavg":
            return QFedAvg(strategy, local, combine, q=asked.q)
        case "fedadam":
            return FedAdam(strategy, local, combine, lr=lr)
        case "fedavgm":
            return FedAvgM(strategy, local, combine, lr=lr, momentum=asked.server_momentum)
    return Federated(strategy, local, combine)


def _local_training(
    strategy: Strategy, asked: StrategySettings, **pull: float
) -> dict[str, ConfigScalar]:
    """The model's local training (common/model_settings.py) as the flags change it, for every
    task of the algorithm; nothing for a model the flags leave as it is."""
    changes = {**asked.local_training(), **pull}
    if not changes:
        return {}
    return replace(LocalTraining.from_config(strategy.model_config), **changes).to_config()
