"""Local differential privacy for histogram trees: every answer leaves a province noised.

A tree ensemble asks many questions in one round (the sketch, then one per depth level), and
under `--privacy dp-local` each province bounds every row's part in its answer and adds
Gaussian noise to every sum before it leaves (common/models/histnoise.py), so the server never
holds an answer without noise. Each question is counted when it is asked, by the run's one
accountant: the sketch as one release, a level as one release per tree it asks about (a row
sits in one node of each tree, so a forest's batched level is as many Gaussian releases). The
guarantee is per row (one row of a province replaced), not per province as for lr-sgd's
dp-local: a province's whole histograms have no bound to clip to.
"""

from __future__ import annotations

from typing import Any

from common.models import histnoise
from common.models.histgrow import TreeStep
from common.tensors import Arrays
from common.wire import ConfigScalar
from server.channel import Keep
from server.disclosure import entry
from server.privacy.dp import DPFedAvg, DPSettings
from server.strategies.trees import HistogramTrees, InTheClear, Shapes
from server.strategy import ClientResult, Instruction


class DPTrees(DPFedAvg):
    """`inner`'s questions, each answered with clipped rows and noised sums by every province."""

    def __init__(self, inner: HistogramTrees, settings: DPSettings, accountant=None) -> None:
        super().__init__(inner, settings, accountant=accountant)  # type: ignore[arg-type]
        self.trees = inner
        inner.exchanges = self
        self._clear = InTheClear()

    def bind_phases(self, run) -> None:
        super().bind_phases(run)
        self.trees.bind_phases(run)

    def configure_fit(self, server_round, parameters, provinces):
        """The inner strategy's sketch; its release counts with the question (`instructions`)."""
        return self.trees.configure_fit(server_round, parameters, provinces)

    def instructions(
        self, config: dict[str, ConfigScalar], arrays: Arrays, cohort: list[str]
    ) -> list[Instruction]:
        """One question, counted now: a refused or late answer spends as much."""
        if TreeStep.from_config(config).tree_step == "sketch":
            self.accountant.spend("noised sketches")
        else:
            self.accountant.spend("noised tree levels", len(arrays["grow_index"]))
        return self._clear.instructions({**config, **self._noise()}, arrays, cohort)

    def check(self, arrays: Arrays, shapes: Shapes) -> None:
        self._clear.check(arrays, shapes)

    def keep(self, shapes: Shapes, cohort: list[str]) -> Keep:
        return self._clear.keep(shapes, cohort)

    def least(self) -> int:
        return self._clear.least()

    def departures(self, server_round: int):
        return self.trees.departures(server_round)

    def total(self, answers: list[ClientResult], shapes: Shapes) -> Arrays:
        """The noised sums; the sketch's cells that its noise alone could fill are emptied."""
        sums = self._clear.total(answers, shapes)
        if "sketch" in sums:
            sigma = self.settings.noise_multiplier
            sums["sketch"] = histnoise.denoised_sketch(sums["sketch"], sigma, len(answers))
        return sums

    def round_report(self, server_round: int) -> dict[str, Any]:
        return {**self.trees.round_report(server_round), **super().round_report(server_round)}

    def disclosure(self):
        s = self.settings
        return {
            **self.trees.disclosure(),
            "statistics": self.statistics_disclosure(),
            "updates": entry(
                "each province's sketch and gradient and Hessian histograms, every row's part "
                f"bounded (gradient to ±{s.clip:g}, weight to 1) and every sum noised by the "
                f"province (Gaussian, σ = {s.noise_multiplier:g} times one row's reach); "
                "ε per row in each round's record",
                "the trees as they grow, and the finished ensemble",
            ),
        }
