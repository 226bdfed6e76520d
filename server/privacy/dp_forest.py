"""Local differential privacy for a union-of-local-trees forest (`--model rf --privacy dp-local`).

Each province grows its trees on targets clipped to ±C, with at least the floor's rows in every
leaf and thresholds on the grid fixed in advance, refits every leaf's value on all its rows and
noises it before the trees leave (client/privacy.py, common/models/leafnoise.py). The server
keeps the union as it does in the clear. Every tree a province sends is one Gaussian release
at the run's noise, counted when the trees are asked for; the trees' shapes leave without noise
and are counted among the releases no finite ε covers. Only dp-local can protect a tree this
way: secure aggregation and HE hide sums, and a tree is not one (rf-hist grows its trees from
summed histograms instead).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from common.model_settings import ForestSettings
from common.models.leafnoise import leaf_noise
from common.protection import DPNoise, Protection
from server.disclosure import entry
from server.ensemble import EnsembleUnion
from server.privacy.dp import Accountant, DPFedAvg, DPSettings
from server.strategy import ClientResult


class DPForest(DPFedAvg):
    """`inner`'s union of trees, each tree's leaves noised by the province that grew it."""

    def __init__(self, inner: EnsembleUnion, settings: DPSettings, accountant: Accountant) -> None:
        super().__init__(inner, settings, accountant=accountant)  # type: ignore[arg-type]

    def configure_fit(self, server_round, parameters, provinces):
        """Each province's trees, counted now (a refused or late answer spends as much): as
        many releases as the most trees one province is asked to grow."""
        plan = self.inner.configure_fit(server_round, parameters, provinces)
        s = self.settings
        noise = DPNoise(s.clip, s.noise_multiplier).to_config()
        noise.update(Protection(s.mode).to_config())
        trees = max((ForestSettings.from_config(i.config).rf_n_estimators for i in plan), default=0)
        if trees:
            self.accountant.spend("noised trees", trees)
            self.accountant.disclose("tree shapes")
        return [replace(i, config={**i.config, **noise}) for i in plan]

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        return self.inner.accept_fit(server_round, result)  # the union keeps its share

    def round_report(self, server_round: int) -> dict[str, Any]:
        return {**self.inner.round_report(server_round), **super().round_report(server_round)}

    def disclosure(self):
        s = self.settings
        least = ForestSettings.from_config(self.inner.model_config).rf_min_samples_leaf
        scale = leaf_noise(s.clip, least, s.noise_multiplier)
        return {
            **super().disclosure(),
            "updates": entry(
                f"each province's trees: their shapes in the clear (features, grid edges and "
                f"each node's row count, at least {least} rows a leaf), each leaf's value the "
                f"mean of its rows' targets clipped to ±{s.clip:g}, noised by the province "
                f"(Gaussian, standard deviation {scale:.3g}); ε covers the leaf values, not "
                f"the shapes",
                "the global forest: the union of the provinces' noised trees",
            ),
        }
