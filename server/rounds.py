"""The round loop, in one place for every schedule: statistics once, then the schedule's rounds.

The loop holds the run's state (the model, the scaler, the strategy) and talks to the provinces
through a task channel (server/channel.py) alone. Every training upload of every schedule
passes through `accept_update`, every aggregation through `aggregate`, every recorded round
through the recorder (server/recorder.py). A schedule (server/schedule.py) decides the rest: a
synchronous cohort, or a buffer of asynchronous arrivals (server/asynchronous.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from common import timesplit
from common.model_settings import ModelTask
from common.models.checks import UpdateError
from common.preprocess import TARGET, GlobalStatistics, features_for
from common.settings import DayCounts, TaskContext
from common.tensors import Arrays, Payload, from_tensor, to_tensor
from common.wire import ConfigScalar, to_config
from proto.fedstock.v1 import federation_pb2 as pb
from server.analysis import Analysis, FinalFit
from server.channel import Accept, Assignment, Keep, TaskChannel, as_it_is, gather
from server.checks import check_declared_count, check_statistics, check_train_count
from server.config import RunSettings
from server.disclosure import by_rounds, cross_validation
from server.ledger import Ledger
from server.recorder import Recorder, Resumed, RunState, round_line
from server.results import ResultsFile
from server.robust_metrics import capped
from server.schedule import Cohort, Schedule, check_outcome
from server.strategy import ClientResult, Evaluation, Failure, Instruction, Strategy

log = logging.getLogger("fedstock.server")


class FederationError(RuntimeError):
    """The federation cannot go on: too few clients, or no model came out of any round."""


class RoundLoop:
    def __init__(
        self,
        channel: TaskChannel,
        strategy: Strategy,
        settings: RunSettings,
        results: ResultsFile,
        ledger: Ledger,
        checkpoint_path: Path,
        analysis: Analysis | None = None,
        schedule: Schedule | None = None,
        resumed: Resumed | None = None,
    ) -> None:
        self.channel = channel
        self.strategy = strategy
        self.settings = settings
        self.results = results
        self.recorder = Recorder(
            results, ledger, checkpoint_path, settings.setting, settings.rounds, settings.forecast
        )
        self.analysis = analysis
        self.schedule = schedule or Cohort()
        self.resumed = resumed
        # The updates the global model was last aggregated from, kept for contributions.
        self.final_fit: FinalFit | None = None
        self.features = features_for(settings.setting, settings.features)
        self.parameters: Arrays | None = None
        self.scaler: pb.Scaler | None = None
        self.statistics: GlobalStatistics | None = None
        self.train_samples: dict[str, int] = {}
        # Added to every task's config: the global numbers models need, and cross-validation's.
        self.task_config: dict[str, ConfigScalar] = {}
        # ... and the federation's split: its first day and date cutoff, once agreed.
        self.split_config: dict[str, ConfigScalar] = {}
        self.train_seconds: Callable[[], float] = lambda: 0.0
        strategy.bind_phases(self.phase)

    def run(self, select: Callable[[RoundLoop], Strategy] | None = None) -> None:
        """Statistics, then (with `select`) model selection picks the strategy, then the rounds."""
        s = self.settings
        first_round, seconds_before = self._resume()
        if first_round == 1:
            provinces = self.quorum(s.min_available)
            self._agree_split(provinces)
            self._statistics(provinces)
        if select is not None:
            self._adopt(select(self))
        started = time.perf_counter()
        self.train_seconds = lambda: seconds_before + time.perf_counter() - started
        self.schedule.run(self, first_round)
        if not self.recorder.finish(self.parameters, self.train_seconds()):
            raise FederationError("no round produced an evaluated model")
        disclosure = self.strategy.disclosure()
        if self.analysis is not None:
            disclosure["analysis"] = self.analysis.disclosure()
        if s.setting != "next-day":  # a random split: no dates were asked for
            disclosure.pop("dates", None)
        disclosure["rounds"] = by_rounds(self.results.rounds())
        if selection := self.results.data.get("model_selection"):
            disclosure["cross_validation"] = cross_validation(selection)
        self.results.update(disclosure=disclosure)
        if self.analysis is not None:
            sections = self.analysis.run(
                self.phase,
                s.rounds + 1,
                self.strategy,
                self.parameters,
                self.final_fit,
                self.channel.connected(),
                self.features,
            )
            self.results.update(**sections)

    # -- the one path of every schedule -------------------------------------------------------

    def accept_update(
        self, server_round: int, arrived: Callable[[ClientResult], None] = lambda r: None
    ) -> Accept:
        """How every training upload is taken as it arrives (on a handler thread): checked, told
        to the schedule (`arrived` may refuse it), then kept as the strategy keeps it."""
        strategy = self.strategy

        def accept(result: ClientResult) -> ClientResult:
            check_outcome(result)
            check_train_count(result.num_examples, self.train_samples.get(result.province))
            strategy.check_update(result.arrays, len(self.features))
            arrived(result)
            return strategy.accept_fit(server_round, result)

        return accept

    def keep_update(self, server_round: int) -> Keep:
        """What the round keeps of a training upload once it counts: folded into the
        strategy's running sum (server/folding.py), or whole where the contributions analysis
        replays the final round on every coalition's updates."""
        if self.analysis is not None and self.analysis.settings.contributions:
            return as_it_is
        strategy, current = self.strategy, self.parameters
        return lambda result: strategy.fold(server_round, result, current)

    def aggregate(
        self, server_round: int, results: list[ClientResult], failures: list[Failure]
    ) -> Arrays | None:
        """The strategy's next model from `results`, which becomes the loop's."""
        aggregated = self.strategy.aggregate_fit(server_round, results, failures, self.parameters)
        self.parameters = aggregated if aggregated is not None else self.parameters
        return aggregated

    def evaluate(
        self,
        strategy: Strategy,
        server_round: int,
        scores: list[ClientResult],
        failures: list[Failure],
    ) -> Evaluation | None:
        """The strategy's evaluation of a round, weighted as this run reports it."""
        evaluation = strategy.aggregate_evaluate(server_round, scores, failures)
        if evaluation is not None and self.settings.robust_metrics:
            return capped(evaluation)
        return evaluation

    def run_state(self) -> RunState:
        """What a restart would need, besides the model, to go on from this round."""
        mean, scale = from_tensor(self.scaler.mean), from_tensor(self.scaler.scale)
        return RunState(self.train_seconds(), (mean, scale), self.strategy.state())

    def round_line(self, record: dict[str, Any]) -> str:
        return round_line(record, self.settings.rounds)

    def quorum(self, count: int) -> list[str]:
        s = self.settings
        provinces = self.channel.wait_for_clients(count, s.join_timeout)
        if len(provinces) < count:
            raise FederationError(
                f"only {len(provinces)} of the {count} required clients are connected "
                f"after {s.join_timeout:g} s: {', '.join(provinces) or 'none'}"
            )
        return provinces

    def phase(
        self,
        server_round: int,
        kind: int,
        instructions: list[Instruction],
        accept: Accept,
        keep: Keep = as_it_is,
    ) -> tuple[list[ClientResult], list[Failure]]:
        """Send one phase of tasks and wait for it to close."""
        return gather(
            self.channel,
            server_round,
            kind,
            self.assignments(server_round, kind, instructions),
            accept,
            self.settings.round_timeout,
            keep,
        )

    def assignments(
        self, server_round: int, kind: int, instructions: list[Instruction]
    ) -> dict[str, Assignment]:
        """Each province's task, its parameters and its settings each encoded once however
        many share them (a histogram tree's question goes to every province alike, hundreds of
        times a round, and encoding some forty settings nine times was a millisecond of each)."""
        payloads: dict[int, Payload] = {}
        templates: dict[tuple[int, int], pb.Task] = {}
        assignments: dict[str, Assignment] = {}
        base = {
            **self.settings.data_config(),
            **self._model_name(),
            **self.split_config,
            **self.task_config,
        }
        for instruction in instructions:
            payload = None
            if instruction.parameters is not None:
                key = id(instruction.parameters)
                if key not in payloads:
                    payloads[key] = Payload.encode(instruction.parameters)
                payload = payloads[key]
            shared = (id(instruction.config), id(payload))
            if shared not in templates:
                templates[shared] = pb.Task(
                    round=server_round,
                    kind=kind,
                    config=to_config({**base, **instruction.config}),
                    scaler=self.scaler,
                    parameters=payload.header if payload else None,
                )
            task = pb.Task()
            task.CopyFrom(templates[shared])
            assignments[instruction.province] = Assignment(task, payload)
        return assignments

    def _model_name(self) -> dict[str, ConfigScalar]:
        """The run's model, named in every task from the first on, so a province can get
        ready for it (histogram trees load their compiled kernels) while the statistics go."""
        named = ModelTask.sent(self.strategy.model_config)
        return {} if named is None else named.to_config()

    # -- before the rounds --------------------------------------------------------------------

    def _resume(self) -> tuple[int, float]:
        """Pick up after the last recorded round if the run was given a checkpoint to resume."""
        resumed = self.resumed
        if resumed is None:
            return 1, 0.0
        self.strategy.restore(resumed.strategy_state)
        self.recorder.resume(resumed)
        self.parameters = resumed.parameters
        mean, scale = resumed.scaler
        self.scaler = pb.Scaler(
            features=self.features, mean=to_tensor("mean", mean), scale=to_tensor("scale", scale)
        )
        self._use_split(self.results.data.get("split", {}))
        record = self.results.data["statistics"]
        stats = GlobalStatistics.from_record(record, self.settings.forecast)
        self._use_statistics(stats, record["train_samples"])
        return resumed.server_round + 1, resumed.train_seconds

    def _agree_split(self, provinces: list[str]) -> None:
        """The split every province makes: in the next-day setting one date cutoff for all,
        from the provinces' rows per calendar day (common/timesplit.py), summed as the privacy
        mode sums statistics; in the paper setting each province's seeded random split."""
        s = self.settings
        if s.setting != "next-day":
            self.results.update(split=timesplit.record(s.setting, s.test_fraction, s.seed, "", ""))
            return

        years = self._counts(provinces, DayCounts("years"), (timesplit.YEARS,))
        asked = timesplit.years_asked(years, s.test_fraction)
        noise = self.strategy.count_noise(len(provinces))
        width = timesplit.bin_width(noise, years, s.test_fraction)
        shape = (len(asked), timesplit.bins(width))
        days = self._counts(provinces, DayCounts.per_day(asked, width), shape)
        start, cutoff = timesplit.agree(years, asked, days, s.test_fraction, width)
        record = timesplit.record(s.setting, s.test_fraction, s.seed, start, cutoff, width)
        self.results.update(split=record)
        self._use_split(record)
        log.info("the federation's time split: train to %s, test after it", cutoff)

    def _counts(
        self,
        provinces: list[str],
        question: DayCounts,
        shape: tuple[int, ...],
    ) -> np.ndarray:
        """The provinces' rows per year, or per day of some years, summed as the privacy mode
        sums statistics."""
        kind = question.day_counts

        def plausible(arrays: Arrays, count: int) -> None:
            check_declared_count(arrays, count, "day counts'")
            try:
                timesplit.check_counts(arrays[kind], shape, count)
            except ValueError as error:
                raise UpdateError(str(error)) from None

        results, parts = self.strategy.gather_statistics(
            provinces,
            {"count": (), kind: shape},
            check_outcome,
            plausible,
            question.to_config(),
        )
        if len(results) < self.settings.min_clients or not parts:
            raise FederationError(f"only {len(results)} clients sent their rows per {kind[:-1]}")
        return sum(part[kind] for part in parts)

    def _use_split(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "time":
            self.split_config = {"split_start": record["start"], "split_cutoff": record["cutoff"]}

    def _statistics(self, provinces: list[str]) -> None:
        size = len(self.features) + 1
        shapes = {"count": (), "sum": (size,), "cross": (size, size)}

        def plausible(arrays: Arrays, count: int) -> None:
            check_statistics(arrays, count, [*self.features, TARGET])

        # What the server holds of them is the privacy mode's to say (its sums only, under secagg).
        results, parts = self.strategy.gather_statistics(
            provinces, shapes, check_outcome, plausible
        )
        if len(results) < self.settings.min_clients or not parts:
            raise FederationError(f"only {len(results)} clients sent their statistics")
        stats = GlobalStatistics.from_sums([*self.features, TARGET], parts, self.settings.forecast)
        mean, scale = stats.scaler()
        self.scaler = pb.Scaler(
            features=self.features, mean=to_tensor("mean", mean), scale=to_tensor("scale", scale)
        )
        train_samples = {r.province: r.num_examples for r in results}
        self.results.update(
            statistics={
                "rows": stats.count,
                "columns": stats.columns,
                "mean": stats.mean.tolist(),
                "std": stats.std.tolist(),
                "pearson": stats.correlation.round(6).tolist(),
                "train_samples": train_samples,
            },
            task_context=TaskContext.from_statistics(stats).to_config(),
        )
        self._use_statistics(stats, train_samples)
        log.info(
            "global statistics from %d provinces over %d training rows", len(results), stats.count
        )

    def _use_statistics(self, stats: GlobalStatistics, train_samples: dict[str, int]) -> None:
        self.statistics, self.train_samples = stats, train_samples
        self.task_config = dict(self.results.data["task_context"])
        self.strategy.prepare(stats, train_samples)

    def _adopt(self, strategy: Strategy) -> None:
        strategy.bind_phases(self.phase)
        strategy.prepare(self.statistics, self.train_samples)
        self.strategy = strategy

    def fit(
        self, strategy: Strategy, config: dict[str, ConfigScalar], records: list[dict[str, Any]]
    ) -> Evaluation | None:
        """Train `strategy` from scratch with `config` added to every task, and its last
        evaluation; each round's record appended to `records`. Model selection's inner runs:
        synchronous rounds, of which nothing enters the results' rounds, the checkpoint or the
        ledger, and the run's own strategy and model are left as they were. With folds of
        days, a province with no rows on a fold's training days (one whose rows begin later)
        sits the fold out: the quorum still asks every province, and a fold's rounds aggregate
        whoever had rows."""
        saved = self.strategy, self.parameters, self.task_config, self.settings
        needed = self.settings.min_clients
        self._adopt(strategy)
        self.parameters, self.task_config = None, {**self.task_config, **config}
        if self.split_config:
            self.settings = replace(self.settings, min_clients=1)
        try:
            evaluation = None
            for server_round in range(1, self.settings.rounds + 1):
                provinces = self.quorum(needed)
                scored = Cohort.round(self, server_round, provinces, records)
                evaluation = scored or evaluation
            return evaluation
        finally:
            self.strategy, self.parameters, self.task_config, self.settings = saved
