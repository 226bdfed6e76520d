"""Local differential privacy for a union-of-local-trees forest (`--model rf --privacy dp-local`).

Before the first round the federation places its bins as gbdt's are placed: each province sends
the sketch of its rows (counts in a fine grid around the federation's mean, from the noised
statistics), noised by the province (common/models/histnoise.py, one counted release); the
server sums them, empties the cells the noise alone could fill and takes the edges at the sum's
quantiles (common/models/histtree.py's `edges_from_sketch`, gbdt's and rf-hist's own). Each
province then draws its trees' shapes from its seed alone (a feature and one of those edges at
each node, to a fixed depth: common/models/forest.py's `drawn_tree`), so that the shape reads
no row and every threshold is one of the federation's edges; it fills each leaf with the count
and sum of all its rows' targets clipped to ±C and noises both before the trees leave
(client/privacy.py, common/models/leafnoise.py). The server refuses a tree with any other
threshold and keeps the union as it does in the clear. Every tree a province sends, shape,
counts and values, is one Gaussian release at the run's noise, counted when the trees are
asked for. This replaces Table 1's grown trees (best split, leaves of one row) under dp-local:
a grown shape depends on the rows and no noise covers it. Only dp-local can
protect a tree this way: secure aggregation and HE hide sums, and a tree is not one (rf-hist
grows its trees from summed histograms instead).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from common.model_settings import ForestSettings
from common.models import forest, histnoise, histtree
from common.models.checks import UpdateError
from common.models.histgrow import TreeSettings, check_answer, sketch_query
from common.settings import RoundNumber
from common.tensors import Arrays
from proto.fedstock.v1 import federation_pb2 as pb
from server.disclosure import entry
from server.ensemble import EnsembleUnion
from server.privacy.dp import Accountant, DPFedAvg, DPSettings
from server.strategy import ClientResult, Instruction


class DPForest(DPFedAvg):
    """`inner`'s union of trees, split at the federation's bin edges, each tree's leaves
    noised by the province that grew it."""

    def __init__(self, inner: EnsembleUnion, settings: DPSettings, accountant: Accountant) -> None:
        super().__init__(inner, settings, accountant=accountant)  # type: ignore[arg-type]
        self._mean = self._std = np.empty(0)
        # The federation's bin edges, one rising array per feature, once its sketch is summed.
        self.edges: list[np.ndarray] | None = None

    def prepare(self, statistics, train_samples) -> None:
        """The sketch's grid is placed from the federation's (noised) mean and deviation of
        each unscaled feature, as gbdt's is."""
        super().prepare(statistics, train_samples)
        self._mean, self._std = statistics.mean[:-1], statistics.std[:-1]

    def _sketch_edges(self, server_round: int, provinces: list[str]) -> list[np.ndarray]:
        """Every province's noised sketch, summed and emptied of what noise alone could fill,
        and the edges at its quantiles; counted when asked."""
        # Imported here: server.schedule's imports lead back to the configuration, and to this.
        from server.schedule import check_outcome

        query = sketch_query(self._mean, self._std)
        max_bins = TreeSettings().max_bins

        def accept(result: ClientResult) -> ClientResult:
            check_outcome(result)
            check_answer(result.arrays, query, len(self._mean), max_bins)
            return result

        config = {
            **self.inner.model_config,
            **RoundNumber(server_round).to_config(),
            **query.config(),
            **self._noise(),
        }
        self.accountant.spend("noised sketches")
        plan = [Instruction(p, config, query.arrays()) for p in provinces]
        answers, _ = self.run_phase(server_round, pb.TASK_KIND_TRAIN, plan, accept)
        if not answers:
            raise UpdateError("no province answered the sketch that places rf's bins")
        total = sum(a.arrays["sketch"] for a in answers)
        sigma = self.settings.noise_multiplier
        counts = histnoise.denoised_sketch(total, sigma, len(answers))
        return histtree.edges_from_sketch(counts, self._mean, self._std, max_bins)

    def configure_fit(self, server_round, parameters, provinces):
        """Each province's trees, counted now (a refused or late answer spends as much): as
        many releases as the most trees one province is asked to grow; the federation's edges
        go with the task, placed first if they are not yet."""
        if self.edges is None:
            self.edges = self._sketch_edges(server_round, provinces)
        plan = self.inner.configure_fit(server_round, parameters, provinces)
        trees = max((ForestSettings.from_config(i.config).rf_n_estimators for i in plan), default=0)
        if trees:
            self.accountant.spend("noised trees", trees)
        shared = histtree.pack_edges(self.edges)
        noise = self._noise()
        return [replace(i, config={**i.config, **noise}, parameters=shared) for i in plan]

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        """Trees well formed, as the union checks them, and split at the federation's edges
        only: decoded once, each feature's thresholds looked up among its edges at once."""
        if self.edges is None:
            raise UpdateError("trees arrived before the federation's bin edges were placed")
        for tree in forest.forest_from_arrays(arrays, n_features):
            split = tree["children_left"] != forest.LEAF
            feature, threshold = tree["feature"][split], tree["threshold"][split]
            off = np.zeros(len(feature), dtype=bool)
            for f in np.unique(feature):
                on = feature == f
                off[on] = ~np.isin(threshold[on], self.edges[f])
            if off.any():
                first = int(np.argmax(off))  # the first in the tree's own order
                raise UpdateError(
                    f"a tree splits feature {feature[first]} at {threshold[first]:g}, "
                    "off the shared bins"
                )

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        """Kept as the union keeps its share (checked in `check_update` before)."""
        return self.inner.accept_fit(server_round, result)

    def round_report(self, server_round: int) -> dict[str, Any]:
        return {**self.inner.round_report(server_round), **super().round_report(server_round)}

    def disclosure(self):
        s = self.settings
        growing = ForestSettings.from_config(self.inner.model_config)
        return {
            **super().disclosure(),
            "updates": entry(
                f"each province's sketch of its rows once, noised by the province and counted "
                f"as a release, summed into the federation's bin edges; then each province's "
                f"trees, each one counted release: shapes drawn from the province's seed alone "
                f"(features and thresholds on those edges, depth {growing.drawn_depth}), each "
                f"leaf's row count and sum of targets clipped to ±{s.clip:g} noised by the "
                f"province (Gaussian, σ = {s.noise_multiplier:g} on a count, σ·C on a sum), "
                f"its value their ratio (count at least {growing.rf_min_samples_leaf}), clamped "
                f"to ±{s.clip:g}; ε covers the whole tree",
                "the federation's bin edges, and the global forest: the union of the "
                "provinces' noised trees",
            ),
        }
