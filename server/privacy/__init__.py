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
from server.privacy.secagg import SecAggFedAvg
from server.strategy import FedAvg, Strategy

PRIVACY_MODES = ("none", *DP_MODES, "he", "secagg")


def add_arguments(add: Callable[..., object], env: Callable[[str, str], str]) -> None:
    add(
        "--privacy",
        choices=PRIVACY_MODES,
        default=env("PRIVACY", "none"),
        help="none; dp-central: the server clips each update and adds Gaussian noise to the "
        "sum; dp-local: each client clips and adds the noise before sending; he: clients send "
        "Paillier ciphertexts that the server adds without a key; secagg: clients mask their "
        "updates so the server can unmask only their sum. Each applies to models whose "
        "updates are weight vectors (lr, lr-sgd, svm), not to forests [FEDSTOCK_PRIVACY]",
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
    add(
        "--secagg-threshold",
        type=int,
        default=env("SECAGG_THRESHOLD", "0"),
        help="with --privacy secagg: clients that must stay in for a round's sum to be "
        "unmasked (any fewer learn nothing of a dropped client's secrets); 0 means "
        "⌊2n/3⌋+1 of the round's n clients [FEDSTOCK_SECAGG_THRESHOLD]",
    )
    add(
        "--secagg-bound",
        type=float,
        default=env("SECAGG_BOUND", "1e9"),
        help="with --privacy secagg: the largest |samples × weight| a client may send; the "
        "fixed-point ring is made just wide enough that n such values never overflow "
        "[FEDSTOCK_SECAGG_BOUND]",
    )
    add(
        "--secagg-neighbours",
        type=int,
        default=env("SECAGG_NEIGHBOURS", "0"),
        help="with --privacy secagg: SecAgg+, each client masks with and shares its secrets "
        "among only k neighbours (an even number) on a k-regular graph the server draws afresh "
        "each round, and --secagg-threshold counts within a neighbourhood (default "
        "⌊2(k+1)/3⌋+1); 0, or k ≥ n−1, masks every pair [FEDSTOCK_SECAGG_NEIGHBOURS]",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the privacy flags, if anything."""
    if args.dp_clip <= 0 or args.dp_noise_multiplier < 0 or args.dp_epsilon < 0:
        return "--dp-clip must be positive, --dp-noise-multiplier and --dp-epsilon non-negative"
    if args.secagg_threshold < 0 or args.secagg_bound <= 0:
        return "--secagg-threshold must be non-negative and --secagg-bound positive"
    if args.secagg_neighbours < 0 or args.secagg_neighbours % 2:
        return "--secagg-neighbours must be an even number, or 0 for every pair"
    if args.secagg_neighbours and args.secagg_threshold > args.secagg_neighbours + 1:
        return "--secagg-threshold cannot exceed a neighbourhood: --secagg-neighbours + 1"
    if args.secagg_neighbours and 0 < args.secagg_threshold * 2 <= args.secagg_neighbours + 1:
        return "--secagg-threshold must be a majority of a neighbourhood: --secagg-neighbours + 1"
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
            "by FedAvg (lr, lr-sgd, svm); forests and lr-exact's normal equations are not"
        )
    if args.privacy == "he":
        return HEFedAvg(strategy, read_public_key(args.he_public_key))
    if args.privacy == "secagg":
        return SecAggFedAvg(
            strategy, args.secagg_threshold, args.secagg_bound, args.secagg_neighbours
        )
    if args.dp_epsilon:
        settings = DPSettings.for_epsilon(
            args.privacy, args.dp_clip, args.dp_epsilon, args.dp_delta, args.rounds
        )
    else:
        settings = DPSettings(args.privacy, args.dp_clip, args.dp_noise_multiplier, args.dp_delta)
    return DPFedAvg(strategy, settings)
