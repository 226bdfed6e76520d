"""Privacy as a setting of the federation (`--privacy`): a wrapper around the model's strategy.

The round loop never knows which mechanism runs; each wraps the strategy's aggregation and
tells clients through the task config what to do to their updates before they leave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.paillier import read_public_key
from server.privacy.dp import MODES as DP_MODES
from server.privacy.dp import DPFedAvg, DPSettings
from server.privacy.he import HEFedAvg
from server.privacy.secagg import SecAggFedAvg
from server.strategy import Strategy

if TYPE_CHECKING:
    from server.config import PrivacySettings

PRIVACY_MODES = ("none", *DP_MODES, "he", "secagg")


def wrap(strategy: Strategy, asked: PrivacySettings, rounds: int) -> Strategy:
    """`strategy` with the privacy mechanism `asked.privacy` around it, for `rounds` rounds.

    The configuration has checked that the model's updates are weight vectors FedAvg averages.
    """
    if asked.privacy == "none":
        return strategy
    if asked.privacy == "he":
        return HEFedAvg(strategy, read_public_key(asked.he_public_key))
    if asked.privacy == "secagg":
        return SecAggFedAvg(
            strategy, asked.secagg_threshold, asked.secagg_bound, asked.secagg_neighbours
        )
    if asked.dp_epsilon:
        dp = DPSettings.for_epsilon(
            asked.privacy, asked.dp_clip, asked.dp_epsilon, asked.dp_delta, rounds
        )
    else:
        dp = DPSettings(asked.privacy, asked.dp_clip, asked.dp_noise_multiplier, asked.dp_delta)
    return DPFedAvg(strategy, dp)
