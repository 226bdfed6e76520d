"""Secure aggregation of histogram trees: the server sums every question's answers unseen.

A tree ensemble asks the provinces many questions in one round — the sketch, then one per depth
level of a boosted tree or of a forest's trees together — and each answer is a sum. The keys are
agreed once, before the round's first question (the KEYS and SHARES phases of
server/privacy/secagg.py, signed as there); then every question is one exchange of
common/secagg.py: each province masks its answer with pairwise masks from its pair seeds, the
exchange's number and a digest of the question, and the server adds the masked answers of every
province, which leaves the plain sum. Nothing is unmasked, so no share is ever revealed. A
province that leaves mid-round takes its masks' other halves with it, so the question out then
is lost; every later exchange names the members who have left, the survivors stop masking with
them, and their sums come out (server/strategies/trees.py decides what is asked next).

Answers are fixed point (common/secagg.py's `Encoding`, 24 fraction bits): row counts are exact,
gradient sums are rounded to 2⁻²⁴ per province, and a value above `--secagg-bound` is refused by
the province that would send it, so the ring's sum never wraps.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from common import secagg, vectors
from common.models.checks import UpdateError
from common.tensors import Arrays
from common.wire import ConfigScalar
from server.channel import Keep, as_it_is
from server.disclosure import entry
from server.privacy.secagg import SecAggFedAvg
from server.strategies.trees import HistogramTrees, Shapes
from server.strategy import ClientResult, Instruction, Strategy

log = logging.getLogger("fedstock.server")


class SecAggTrees(SecAggFedAvg):
    """`inner`'s questions, each answered under one exchange of the round's key agreement."""

    def __init__(
        self, inner: HistogramTrees, threshold: int = 0, bound: float = 1e9, neighbours: int = 0
    ) -> None:
        super().__init__(inner, threshold, bound, neighbours)  # type: ignore[arg-type]
        self.trees = inner
        inner.exchanges = self
        self._relay: dict[str, tuple[dict[str, ConfigScalar], Arrays]] = {}
        self._exchange = 0

    def bind_phases(self, run) -> None:
        super().bind_phases(run)
        self.trees.bind_phases(run)

    def prepare(self, statistics, train_samples) -> None:
        self.trees.prepare(statistics, train_samples)

    def configure_fit(self, server_round, parameters, provinces):
        """The round's key agreement, then the inner strategy's first question to every
        province that took part in it (each must answer every later question too)."""
        plan = self._open(server_round, provinces, None, "bounded")
        self._relay = {i.province: (i.config, i.parameters or {}) for i in plan}
        self._exchange = 0
        if not plan:
            return []
        return self.trees.configure_fit(server_round, parameters, sorted(self._relay))

    def instructions(
        self, config: dict[str, ConfigScalar], arrays: Arrays, cohort: list[str]
    ) -> list[Instruction]:
        """One exchange: a fresh number and the members no longer in `cohort`; the shares
        relayed with the first."""
        self._exchange += 1
        first = self._exchange == 1
        seat = self._round.index if self._round is not None else {}
        left = sorted(seat[p] for p in self._relay if p not in cohort)
        exchange = secagg.Exchange(self._exchange, ",".join(map(str, left)) or None)
        return [
            Instruction(
                p,
                {**config, **self._relay[p][0], **exchange.to_config()},
                {**arrays, **self._relay[p][1]} if first else arrays,
            )
            for p in cohort
        ]

    def check(self, arrays: Arrays, shapes: Shapes) -> None:
        """int64 ring elements of exactly the answer's shapes."""
        if set(arrays) != set(shapes):
            raise UpdateError(f"expected tensors {sorted(shapes)}, got {sorted(arrays)}")
        for name, shape in shapes.items():
            if arrays[name].dtype != np.int64 or arrays[name].shape != shape:
                raise UpdateError(f"a masked {name!r} must be int64 of shape {shape}")

    def keep(self, shapes: Shapes, cohort: list[str]) -> Keep:
        """Each masked answer as it is: only their sum unmasks, once all are in."""
        return as_it_is

    def total(self, answers: list[ClientResult], shapes: Shapes) -> Arrays:
        state = self._round
        if state is None:
            raise secagg.SecAggError("an exchange without a key agreement")
        masked = [secagg.join_input(r.arrays) for r in answers]
        sums = secagg.exchange_sum(secagg.encoding_for(state.config), masked)
        return vectors.unflatten(sums, {name: np.empty(shape) for name, shape in shapes.items()})

    def least(self) -> int:
        """The threshold: fewer survivors would leave one's answer with too few masks."""
        state = self._round
        if state is None:
            raise secagg.SecAggError("an exchange without a key agreement")
        return state.threshold

    def departures(self, server_round: int):
        return self.trees.departures(server_round)

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        self.trees.check_update(arrays, n_features)

    def aggregate_fit(self, server_round, results, failures, current):
        return self.trees.aggregate_fit(server_round, results, failures, current)

    def round_report(self, server_round: int) -> dict[str, Any]:
        return self.trees.round_report(server_round)

    def round_disclosure(self, server_round, asked, sent):
        """A round's questions are each a sum over every province that answers: the run's
        entry, with who sent."""
        return Strategy.round_disclosure(self, server_round, asked, sent)

    def disclosure(self):
        return {
            **super().disclosure(),
            "updates": entry(
                "the sums over every province of each question's answers (the sketch's cell "
                "counts; each node's gradient and Hessian histograms), securely aggregated: "
                "masked uploads whose masks cancel only in the sum of all; which provinces "
                "took part, and each one's row count, in the clear",
                "the trees as they grow, and the finished ensemble",
            ),
        }
