"""Privacy as a setting of the federation (`--privacy`): a wrapper around the model's strategy.

The round loop never knows which mechanism runs; each wraps the strategy's aggregation and
tells clients through the task config what to do to their updates before they leave.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from common.paillier import read_public_key
from server.privacy.dp import MODES as DP_MODES
from server.privacy.dp import DPFedAvg, DPSettings
from server.privacy.he import HEFedAvg
from server.strategy import FedAvg, Strategy

PRIVACY_MODES = ("none", *DP_MODES, "he")


def add_arguments(add: Callable[..., object], env: Callable[[str, str], str]) -> None:
    add(
        "--privacy",
        choices=PRIVACY_MODES,
        default=env("PRIVACY", "none"),
        help="none; dp-central: the server clips each update and adds Gaussian noise to the "
        "sum; dp-local: each client clips and adds the noise before sending; he: clients send "
        "Paillier ciphertexts that the server adds without a key. Each applies to models "
        "whose updates are weight vectors (lr, svm), not to forests [FEDSTOCK_PRIVACY]",
    )
    add(
        "--dp-clip",
        type=float,
        default=env("DP_CLIP", "10"),
        help="L2 bound C on a client's step from the global parameters [FEDSTOCK_DP_CLIP]",
    )
    add(
        "--dp-noise-multiplier",
        type=float,
        default=env("DP_NOISE_MULTIPLIER", "1.0"),
        help="Gaussian noise σ in units of C (ignored with --dp-epsilon) "
        "[FEDSTOCK_DP_NOISE_MULTIPLIER]",
    )
    add(
        "--dp-epsilon",
        type=float,
        default=env("DP_EPSILON", "0"),
        help="target ε over all rounds: the noise is calibrated to reach it; 0 means use "
        "--dp-noise-multiplier [FEDSTOCK_DP_EPSILON]",
    )
    add(
        "--dp-delta",
        type=float,
        default=env("DP_DELTA", "1e-5"),
        help="δ at which ε is reported [FEDSTOCK_DP_DELTA]",
    )
    add(
        "--he-public-key",
        type=Path,
        default=env("HE_PUBLIC_KEY", "he.pub"),
        help="with --privacy he: the federation's Paillier public key, he.pub from "
        "`python -m client.he_keys` (the provinces keep he.key) [FEDSTOCK_HE_PUBLIC_KEY]",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the privacy flags, if anything."""
    if args.dp_clip <= 0 or args.dp_noise_multiplier < 0 or args.dp_epsilon < 0:
        return "--dp-clip must be positive, --dp-noise-multiplier and --dp-epsilon non-negative"
    if not 0 < args.dp_delta < 1:
        return "--dp-delta must lie strictly between 0 and 1"
    return None


def wrap(strategy: Strategy, args: argparse.Namespace) -> Strategy:
    """`strategy` with the privacy mechanism `args.privacy` around it."""
    if args.privacy == "none":
        return strategy
    if not isinstance(strategy, FedAvg):
        raise ValueError(
            f"--privacy {args.privacy} needs a model whose updates are weight vectors averaged "
            "by FedAvg (lr, svm); forests and lr-exact's normal equations are not"
        )
    if args.privacy == "he":
        return HEFedAvg(strategy, read_public_key(args.he_public_key))
    if args.dp_epsilon:
        settings = DPSettings.for_epsilon(
            args.privacy, args.dp_clip, args.dp_epsilon, args.dp_delta, args.rounds
        )
    else:
        settings = DPSettings(args.privacy, args.dp_clip, args.dp_noise_multiplier, args.dp_delta)
    return DPFedAvg(strategy, settings)
