"""Histogram trees over the federation: every question to the provinces is one phase of tasks.

The round's training phase is the sketch (rows per grid cell, for the shared bin edges); the
strategy then grows the whole ensemble in further phases of the same round — per depth level
one phase, the open nodes' histograms up, the splits chosen since the phase before down — and
the server sums what comes back (common/models/histgrow.py). One round builds the ensemble; a
later round grows a fresh one. Sums are added in province order, so a run repeats exactly.

How a question goes out and its answers are summed is an `Exchanges`: in the clear here, under
secure aggregation in server/privacy/secagg_trees.py, where the server holds only the sums.

A province that leaves mid-round (its session ended, its task failed) is asked nothing more:
the question out when it left is lost (`histgrow.Lost`), the grower goes on with the rest, and
the round's record names who left and where; with fewer than `Exchanges.least` left, growing
stops and the round keeps the model it had.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from common.models import histtree
from common.models.checks import check_arrays
from common.models.histgrow import (
    AT,
    HISTOGRAMS,
    Grown,
    Lost,
    Query,
    TreeSettings,
    add_up,
    answer_shapes,
    ask_again,
    check_compact,
    grow,
    sketch_query,
)
from common.preprocess import GlobalStatistics
from common.settings import RoundNumber
from common.tensors import Arrays
from common.wire import ConfigScalar
from proto.fedstock.v1 import federation_pb2 as pb
from server.channel import Keep
from server.strategy import ClientResult, Failure, Instruction, Strategy

log = logging.getLogger("fedstock.server")

Shapes = dict[str, tuple[int, ...]]


class Incomplete(RuntimeError):
    """A province did not answer a question: the sums would be partial, so growing stops."""


class Exchanges(Protocol):
    """How one question reaches the cohort and how their answers become one sum."""

    def instructions(
        self, config: dict[str, ConfigScalar], arrays: Arrays, cohort: list[str]
    ) -> list[Instruction]: ...

    def check(self, arrays: Arrays, shapes: Shapes) -> None:
        """UpdateError unless `arrays` is a well-formed answer of these shapes."""

    def keep(self, shapes: Shapes, cohort: list[str]) -> Keep:
        """What to keep of each checked answer to the question about to go to `cohort`, as it
        arrives (it may be added to the sum there)."""

    def total(self, answers: list[ClientResult], shapes: Shapes) -> Arrays:
        """The sum of every province's answer, given in province order."""

    def least(self) -> int:
        """How many provinces must still be in for their sums to be taken."""


class InOrder:
    """A question's sum made as its answers arrive, each added once every answer before it in
    `order` has been, so every entry is 0 + the first's + the second's …, as `add_up` adds
    them, to the last bit. Only the answers after the last to arrive (in `order`) are left to
    add once it has: adding all nine after the last one held the next question."""

    def __init__(self, shapes: Shapes, order: list[str]) -> None:
        self.order = order
        self._sums: dict[str, Any] = {
            name: np.zeros(math.prod(shape)) if name in HISTOGRAMS else 0
            for name, shape in shapes.items()
        }
        self._shapes = shapes
        self._arrived: dict[str, Arrays] = {}
        self._added = 0
        self._lock = threading.Lock()

    def keep(self, result: ClientResult) -> ClientResult:
        """Hold `result`'s answer and add every held one whose turn it is (a handler thread)."""
        with self._lock:
            self._arrived[result.province] = result.arrays
            while self._added < len(self.order) and self.order[self._added] in self._arrived:
                self._add(self._arrived[self.order[self._added]])
                self._added += 1
        return result

    def _add(self, answer: Arrays) -> None:
        for name, total in self._sums.items():
            if name not in HISTOGRAMS:
                self._sums[name] = total + answer[name]
            elif AT in answer:
                total[answer[AT]] += answer[name]
            else:
                total += answer[name].ravel()

    def total(self, provinces: list[str], shapes: Shapes) -> Arrays | None:
        """The sum, if it is of exactly `provinces`' answers (all of `order`) of these
        `shapes`, else None."""
        with self._lock:
            if provinces != self.order or self._added < len(self.order) or shapes != self._shapes:
                return None
            return {
                name: total.reshape(self._shapes[name]) if name in HISTOGRAMS else total
                for name, total in self._sums.items()
            }


class InTheClear:
    """Each province's answer reaches the server as it is (histograms as their nonzero entries,
    `histgrow.compact`); the server adds them up as they arrive (`InOrder`)."""

    def __init__(self) -> None:
        self._running: InOrder | None = None

    def instructions(
        self, config: dict[str, ConfigScalar], arrays: Arrays, cohort: list[str]
    ) -> list[Instruction]:
        return [Instruction(p, config, arrays) for p in cohort]

    def check(self, arrays: Arrays, shapes: Shapes) -> None:
        if AT in arrays:
            check_compact(arrays, shapes)
        else:
            check_arrays(arrays, shapes)

    def keep(self, shapes: Shapes, cohort: list[str]) -> Keep:
        self._running = InOrder(shapes, cohort)
        return self._running.keep

    def total(self, answers: list[ClientResult], shapes: Shapes) -> Arrays:
        """The running sum of these answers when they are the question's, or their sum now."""
        running, self._running = self._running, None
        made = running.total([r.province for r in answers], shapes) if running is not None else None
        return made if made is not None else add_up([r.arrays for r in answers], shapes)

    def least(self) -> int:
        return 1


class HistogramTrees(Strategy):
    def __init__(self, model_config: Mapping[str, ConfigScalar], settings: TreeSettings) -> None:
        """The split scoring's compiled kernel starts loading now, in the background, while the
        provinces join: loaded at the first split instead, it held the round's first question
        (numba's import and cache, seconds of a busy machine's CPU)."""
        super().__init__(model_config)
        histtree.warm_up()
        self.settings = settings
        self.exchanges: Exchanges = InTheClear()
        self._mean = self._std = np.zeros(0)
        self._base_score = 0.0
        self._cohort: list[str] = []
        self._where: list[dict[str, Any]] = []  # who left, why and at which question
        self._report: dict[str, Any] = {}
        self._bytes = {"bytes_down": 0, "bytes_up": 0}

    def prepare(self, statistics: GlobalStatistics, train_samples: Mapping[str, int]) -> None:
        """Bins are placed from the federation's mean and deviation of each (unscaled) feature;
        the ensemble starts from the mean change of the price from today's close (of a change
        or a return, its mean: the trees learn the move)."""
        self._mean, self._std = statistics.mean[:-1], statistics.std[:-1]
        self._base_score = statistics.move_moments()[0]

    def _sketch(self) -> Query:
        return sketch_query(self._mean, self._std)

    def configure_fit(
        self, server_round: int, parameters: Arrays | None, provinces: list[str]
    ) -> list[Instruction]:
        self._cohort = sorted(provinces)
        self._where = []
        return self._instructions(server_round, self._sketch())

    def _instructions(self, server_round: int, query: Query) -> list[Instruction]:
        config = {**self.model_config, **RoundNumber(server_round).to_config(), **query.config()}
        return self.exchanges.instructions(config, query.arrays(), self._cohort)

    def _shapes(self, query: Query) -> Shapes:
        return answer_shapes(query, len(self._mean), self.settings.max_bins)

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        self.exchanges.check(
            arrays, answer_shapes(self._sketch(), n_features, self.settings.max_bins)
        )

    def aggregate_fit(
        self,
        server_round: int,
        results: list[ClientResult],
        failures: list[Failure],
        current: Arrays | None,
    ) -> Arrays | None:
        self._bytes = dict.fromkeys(self._bytes, 0)
        sketch_shapes = self._shapes(self._sketch())
        try:
            try:
                sketch = self._sum(results, failures, sketch_shapes, self._sketch())["sketch"]
            except Lost:
                sketch = ask_again(lambda q: self._ask(server_round, q), self._sketch())["sketch"]
            grown = grow(
                lambda query: self._ask(server_round, query),
                sketch,
                self._mean,
                self._std,
                self._base_score,
                self.settings,
            )
        except Incomplete as error:
            log.warning(
                "round %d: growing stopped, the model is unchanged: %s", server_round, error
            )
            self._report = {"trees": {"stopped": str(error), **self._departed(), **self._bytes}}
            return None
        self._report = {"trees": {**_describe(grown), **self._departed(), **self._bytes}}
        return grown.arrays()

    def _ask(self, server_round: int, query: Query) -> Arrays:
        if query.step == "level" and query.depth == 0 and query.tree < self.settings.trees:
            log.info(
                "round %d: growing tree %d of %d", server_round, query.tree + 1, self.settings.trees
            )
        shapes = self._shapes(query)

        def accept(result: ClientResult) -> ClientResult:
            self.exchanges.check(result.arrays, shapes)
            return result

        instructions = self._instructions(server_round, query)
        keep = self.exchanges.keep(shapes, self._cohort)
        results, failures = self.run_phase(
            server_round, pb.TASK_KIND_TRAIN, instructions, accept, keep
        )
        # The questions and answers after the sketch: the round's own counts hold the sketch.
        self._bytes["bytes_down"] += sum(_nbytes(i.parameters) for i in instructions)
        self._bytes["bytes_up"] += sum(_nbytes(r.arrays) for r in results)
        return self._sum(results, failures, shapes, query)

    def _sum(
        self, results: list[ClientResult], failures: list[Failure], shapes: Shapes, query: Query
    ) -> Arrays:
        """The answers' sum; Lost (the cohort shrunk to the rest) when a province left, or
        Incomplete when too few are left to go on with."""
        answered = sorted(results, key=lambda r: r.province)
        missing = sorted(set(self._cohort) - {r.province for r in answered})
        if missing:
            why = {f.province: f.reason for f in failures}
            self._cohort = [p for p in self._cohort if p not in missing]
            for province in missing:
                reason = why.get(province, "no answer")
                self._where.append(
                    {"province": province, "reason": reason, "step": query.step}
                    | ({"tree": query.tree, "depth": query.depth} if query.step == "level" else {})
                )
            reasons = "; ".join(f"{p}: {why.get(p, 'no answer')}" for p in missing)
            if len(self._cohort) < self.exchanges.least():
                raise Incomplete(f"no answer from {', '.join(missing)} ({reasons})")
            log.warning(
                "%s left at the %s question of tree %d (%s); going on with the %d still in",
                ", ".join(missing),
                f"depth-{query.depth}" if query.step == "level" else query.step,
                query.tree + 1,  # counted from 1, as "growing tree N" is; records count from 0
                reasons,
                len(self._cohort),
            )
            raise Lost(reasons)
        return self.exchanges.total(answered, shapes)

    def _departed(self) -> dict[str, Any]:
        """Who left during the round and at which question (absent when nobody did)."""
        return {"left": self._where} if self._where else {}

    def departures(self, server_round: int) -> list[Failure]:
        return [Failure(w["province"], w["reason"]) for w in self._where]

    def round_report(self, server_round: int) -> dict[str, Any]:
        return self._report


def _describe(grown: Grown) -> dict[str, Any]:
    """What the results file keeps of how the ensemble was grown."""
    return {
        "count": len(grown.trees),
        "nodes": sum(len(t["value"]) for t in grown.trees),
        "exchanges": grown.exchanges,
        "bins": [len(e) + 1 for e in grown.edges],
        "validation_mse": grown.validation_mse,
    } | ({"cut": [{"tree": t, "depth": d} for t, d in grown.cut]} if grown.cut else {})


def _nbytes(arrays: Arrays | None) -> int:
    return sum(a.nbytes for a in (arrays or {}).values())
