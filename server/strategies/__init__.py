"""Federated algorithms beyond plain FedAvg, chosen by `--strategy` and `--aggregation`.

They apply to models whose updates are weight vectors averaged by FedAvg; FedProx, SCAFFOLD,
FedNova and q-FedAvg need clients that train by gradient steps (`--model lr-sgd`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from common.compression import METHODS
from server.strategies.compressed import Compressed
from server.strategies.federated import FedAdam, FedAvgM, Federated, FedNova, QFedAvg, Scaffold
from server.strategies.robust import AGGREGATIONS, combiner
from server.strategy import FedAvg, Strategy

STRATEGY_NAMES = ("fedavg", "fedprox", "fednova", "scaffold", "qfedavg", "fedadam", "fedavgm")
# The server learning rate each optimiser starts from unless --server-lr says otherwise:
# FedAdam moves every coordinate by about this much a round, the others scale the mean step.
SERVER_LR = {"fedadam": 0.05}
# Local training settings a gradient-trained model takes from the command line.
LOCAL_FLAGS = ("local_epochs", "learning_rate", "batch_size")


def add_arguments(add: Callable[..., object], env: Callable[[str, str | None], str | None]) -> None:
    add(
        "--strategy",
        choices=STRATEGY_NAMES,
        default=env("STRATEGY", "fedavg"),
        help="fedavg; fedprox: clients add μ/2·‖w − w_global‖² to their loss; fednova: steps "
        "normalised by each client's local step count; scaffold: control variates against "
        "client drift; qfedavg: provinces with higher loss weigh more (fairness); fedadam, "
        "fedavgm: a server optimiser on the averaged step. All but fedavg and the server "
        "optimisers need --model lr-sgd [FEDSTOCK_STRATEGY]",
    )
    add(
        "--aggregation",
        choices=AGGREGATIONS,
        default=env("AGGREGATION", "mean"),
        help="how the clients' steps are combined: the sample-weighted mean, or robust to "
        "poisoned updates: coordinate-wise median, trimmed mean, Krum, Multi-Krum "
        "[FEDSTOCK_AGGREGATION]",
    )
    add(
        "--trim-fraction",
        type=float,
        default=env("TRIM_FRACTION", "0.25"),
        help="share of updates dropped at each end per coordinate by the trimmed mean, rounded "
        "down: 0.25 drops 2 of 9, as many liars as Krum's default f [FEDSTOCK_TRIM_FRACTION]",
    )
    add(
        "--krum-f",
        type=int,
        default=env("KRUM_F", "2"),
        help="malicious clients Krum and Multi-Krum are built to tolerate [FEDSTOCK_KRUM_F]",
    )
    add("--mu", type=float, default=env("MU", "0.01"), help="FedProx's μ [FEDSTOCK_MU]")
    add("--q", type=float, default=env("Q", "1.0"), help="q-FedAvg's fairness q [FEDSTOCK_Q]")
    add(
        "--server-lr",
        type=float,
        default=env("SERVER_LR"),
        help="server learning rate of fedadam (default 0.05), fedavgm and scaffold (1.0) "
        "[FEDSTOCK_SERVER_LR]",
    )
    add(
        "--server-momentum",
        type=float,
        default=env("SERVER_MOMENTUM", "0.9"),
        help="FedAvgM's momentum β [FEDSTOCK_SERVER_MOMENTUM]",
    )
    add(
        "--compression",
        choices=METHODS,
        default=env("COMPRESSION", "none"),
        help="how clients send their step from the global weights after the first round: "
        "whole, as float16, as int8 with a scale, or its largest --topk-fraction coordinates; "
        "what is dropped is carried to the next round (error feedback) [FEDSTOCK_COMPRESSION]",
    )
    add(
        "--topk-fraction",
        type=float,
        default=env("TOPK_FRACTION", "0.1"),
        help="share of coordinates top-k compression sends [FEDSTOCK_TOPK_FRACTION]",
    )
    add(
        "--local-epochs",
        type=int,
        default=env("LOCAL_EPOCHS"),
        help="passes over its rows each client makes per round (lr-sgd: 1) [FEDSTOCK_LOCAL_EPOCHS]",
    )
    add(
        "--learning-rate",
        type=float,
        default=env("LEARNING_RATE"),
        help="clients' gradient step size (lr-sgd: 0.02; plain SGD diverges above 2 / the "
        "largest eigenvalue of a province's scaled features' second moments, about 0.05 on the "
        "synthetic market) [FEDSTOCK_LEARNING_RATE]",
    )
    add(
        "--batch-size",
        type=int,
        default=env("BATCH_SIZE"),
        help="clients' mini-batch rows (lr-sgd: 64) [FEDSTOCK_BATCH_SIZE]",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the strategy flags, if anything."""
    if not 0 <= args.trim_fraction < 0.5:
        return "--trim-fraction must lie in [0, 0.5)"
    if args.krum_f < 0 or args.mu < 0 or args.q < 0 or args.server_momentum < 0:
        return "--krum-f, --mu, --q and --server-momentum cannot be negative"
    positive = [f for f in (*LOCAL_FLAGS, "server_lr") if (getattr(args, f) or 1) <= 0]
    if positive:
        return f"--{positive[0].replace('_', '-')} must be positive"
    if not 0 < args.topk_fraction <= 1:
        return "--topk-fraction must lie in (0, 1]"
    if args.strategy == "scaffold" and args.compression != "none":
        return "SCAFFOLD's control variates travel whole; use it with --compression none"
    if args.strategy == "qfedavg" and args.aggregation != "mean":
        return "q-FedAvg weighs the steps by loss itself; use it with --aggregation mean"
    return None


def wrap(strategy: Strategy, args: argparse.Namespace) -> Strategy:
    """`strategy` as the algorithm and compression the flags ask for."""
    algorithm = _algorithm(strategy, args)
    if args.compression == "none":
        return algorithm
    return Compressed(algorithm, args.compression, args.topk_fraction)


def _algorithm(strategy: Strategy, args: argparse.Namespace) -> Strategy:
    """`strategy` as the algorithm the flags ask for; plain FedAvg is returned as it is."""
    local = {f: getattr(args, f) for f in LOCAL_FLAGS if getattr(args, f) is not None}
    plain = args.strategy == "fedavg" and args.aggregation == "mean" and not local
    if plain and args.compression == "none":
        return strategy
    if type(strategy) is not FedAvg:
        raise ValueError(
            "--strategy, --aggregation and --compression need a model whose updates are weight "
            "vectors averaged by FedAvg (lr, lr-sgd, svm), without --privacy"
        )
    gradient = "learning_rate" in strategy.model_config
    if args.strategy in ("fedprox", "fednova", "scaffold", "qfedavg") and not gradient:
        raise ValueError(f"--strategy {args.strategy} needs clients that train by gradient steps")
    if local and not gradient:
        raise ValueError("--local-epochs, --learning-rate and --batch-size apply to lr-sgd")
    if plain:
        return strategy
    combine = combiner(args.aggregation, args.trim_fraction, args.krum_f)
    lr = args.server_lr or SERVER_LR.get(args.strategy, 1.0)
    match args.strategy:
        case "fedprox":
            return Federated(strategy, {**local, "mu": args.mu}, combine)
        case "fednova":
            return FedNova(strategy, local, combine)
        case "scaffold":
            return Scaffold(strategy, local, combine, lr=lr)
        case "qfedavg":
            return QFedAvg(strategy, local, combine, q=args.q)
        case "fedadam":
            return FedAdam(strategy, local, combine, lr=lr)
        case "fedavgm":
            return FedAvgM(strategy, local, combine, lr=lr, momentum=args.server_momentum)
    return Federated(strategy, local, combine)
