"""Privacy as a setting of the federation (`--privacy`): a wrapper around the model's strategy.

The round loop never knows which mechanism runs; each wraps the strategy's aggregation and
tells clients through the task config what to do to their updates before they leave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.dpbounds import Ranges
from common.paillier import read_public_key
from server.ensemble import EnsembleUnion
from server.privacy.dp import ACCOUNTANTS, Accountant, DPFedAvg, DPSettings
from server.privacy.dp import MODES as DP_MODES
from server.privacy.dp_forest import DPForest
from server.privacy.dp_trees import DPTrees
from server.privacy.he import HEFedAvg
from server.privacy.secagg import SecAggFedAvg
from server.privacy.secagg_trees import SecAggTrees
from server.strategies.trees import HistogramTrees
from server.strategy import Strategy

if TYPE_CHECKING:
    from server.config import PrivacySettings

PRIVACY_MODES = ("none", *DP_MODES, "he", "secagg")
DP_ACCOUNTANTS = tuple(ACCOUNTANTS)


def wrap(
    strategy: Strategy,
    asked: PrivacySettings,
    rounds: int,
    accountant: Accountant | None = None,
) -> Strategy:
    """`strategy` with the privacy mechanism `asked.privacy` around it, for `rounds` rounds.

    The configuration has checked that the model's updates are weight vectors FedAvg averages,
    or, under secure aggregation and local DP, histogram trees' sums, or, under local DP, a
    forest's trees.
    Under DP, `accountant` is the run's own, shared by every strategy the run builds (model
    selection's too), so that every release counts; without it, a new one for `rounds`.
    """
    if asked.privacy == "none":
        return strategy
    if asked.privacy == "he":
        public = read_public_key(asked.he_public_key, asked.he_insecure_key_size)
        return HEFedAvg(strategy, public)
    if asked.privacy == "secagg":
        masked = SecAggTrees if isinstance(strategy, HistogramTrees) else SecAggFedAvg
        return masked(strategy, asked.secagg_threshold, asked.secagg_bound, asked.secagg_neighbours)
    spent = accountant or dp_accountant(asked, rounds)
    if spent is None:
        raise ValueError(f"unknown privacy mode {asked.privacy!r}")
    if isinstance(strategy, HistogramTrees):  # the configuration allows dp-local only
        return DPTrees(strategy, spent.settings, accountant=spent)
    if isinstance(strategy, EnsembleUnion):  # rf: the configuration allows dp-local only
        return DPForest(strategy, spent.settings, spent)
    return DPFedAvg(strategy, spent.settings, accountant=spent)


def dp_accountant(
    asked: PrivacySettings, releases: int, bounds: Ranges | None = None
) -> Accountant | None:
    """The run's one DP accountant (None without DP); with --dp-epsilon the noise is
    calibrated so that all `releases` noisy releases together spend it. `bounds` are the
    statistics columns' public ranges (`ServerConfig.dp_ranges`)."""
    if asked.privacy not in DP_MODES:
        return None
    if asked.dp_epsilon:
        dp = DPSettings.for_epsilon(
            asked.privacy,
            asked.dp_clip,
            asked.dp_epsilon,
            asked.dp_delta,
            releases,
            asked.dp_accountant,
            asked.dp_score_clip,
            bounds,
        )
    else:
        dp = DPSettings(
            asked.privacy,
            asked.dp_clip,
            asked.dp_noise_multiplier,
            asked.dp_delta,
            asked.dp_accountant,
            asked.dp_score_clip,
            dict(bounds or {}),
        )
    return Accountant(dp)
