"""Asynchronous rounds (`--mode async`): nobody waits for the slowest, a version every K updates.

In a synchronous round every province waits for the slowest one. Here each client gets its
next task as soon as it answers, starting from the newest global version; its update enters a
buffer as a step from the version it started from, weighted down by its staleness
(server/buffer.py), and every K updates make the next version. `--rounds` counts versions,
and each is recorded as a synchronous round is: a results record (its updates with their
staleness and weight), a ledger entry and a checkpoint. The last version also takes the
updates that arrived together with its K-th; tasks still out then are called off.

Scoring does not wait for the slowest either. A client that comes free first scores the
versions it has not scored yet, oldest first. A version's score is complete once every
connected province has scored it, except those still busy with a task handed out before the
version existed; its record names the provinces that scored it (`evaluated_by`). The last
version is scored by every connected province, so the final result covers them all.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from common.tensors import Arrays, Payload
from proto.fedstock.v1 import federation_pb2 as pb
from server.buffer import Contribution, VersionBuffer
from server.channel import Accept, Phase
from server.config import Buffering
from server.rounds import (
    FederationError,
    RoundLoop,
    _nbytes,
    _weighted_metric,
    accept_evaluation,
    check_outcome,
)
from server.strategy import ClientResult, Failure, Instruction

log = logging.getLogger("fedstock.server")


@dataclass
class InFlight:
    """A task out with a client, and the newest version when it was handed out."""

    phase: Phase
    version: int  # training: the version it started from; evaluation: the version it scores
    handed_at: int


@dataclass
class Unscored:
    """A published version waiting for its scores before it is recorded."""

    version: int
    parameters: Arrays
    record: dict[str, Any]
    entry: dict[str, Any]
    asked: set[str] = field(default_factory=set)
    scores: list[ClientResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class AsyncLoop(RoundLoop):
    """The round loop's statistics, records and checkpoints, with FedBuff's rounds."""

    def __init__(self, *args: Any, buffering: Buffering, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffering = buffering
        self._tasks: dict[str, InFlight] = {}
        self._unscored: list[Unscored] = []
        self._handed = 0

    def run(self, select: Callable[[RoundLoop], Any] | None = None) -> None:
        if select is not None:
            raise FederationError("model selection runs synchronous rounds; use --mode sync")
        s, b = self.settings, self.buffering
        first_version, seconds_before, _ = self._resume()
        if first_version == 1:
            self._statistics(self._quorum(s.min_available))
        self._quorum(s.min_clients)
        self.results.update(
            asynchronous={
                "buffer_size": b.size,
                "staleness_exponent": b.exponent,
                "max_staleness": b.max_staleness,
            }
        )
        self.buffer = VersionBuffer(
            first_version - 1, self.parameters, b.size, b.exponent, b.max_staleness
        )
        started = time.perf_counter()
        self._seconds = lambda: seconds_before + time.perf_counter() - started
        self._since_published = self._seconds()
        self._open_record()
        while self.buffer.version < s.rounds or self._unscored:
            phases = [task.phase for task in self._tasks.values()]
            for phase in self.channel.wait_any(phases, timeout=1.0):
                self._settle(phase)
            if self.buffer.ready:  # the last version, with every update that came with its K-th
                self._publish()
            self._record_scored()
            for province in self.channel.connected():
                if province not in self._tasks:
                    self._next_task(province)
            if not self._tasks:
                self._quorum(1)
        self._finish(self._last_evaluation, self._seconds())

    # -- handing out --------------------------------------------------------------------------

    def _next_task(self, province: str) -> None:
        """Scores of the versions it has not scored yet first, then training on the newest."""
        for unscored in self._unscored:
            if province not in unscored.asked:
                unscored.asked.add(province)
                [ask] = self.strategy.configure_evaluate(
                    unscored.version, unscored.parameters, [province]
                )
                self._hand_out(unscored.version, pb.TASK_KIND_EVALUATE, ask, accept_evaluation)
                return
        if self.buffer.version >= self.settings.rounds:
            return
        started_from, parameters = self.buffer.start()
        [fit] = self.strategy.configure_fit(started_from + 1, parameters, [province])
        # A client may train twice from one version: each task shuffles its batches anew.
        self._handed += 1
        fit = replace(fit, config={**fit.config, "sgd_seed": self._handed})
        self._hand_out(started_from + 1, pb.TASK_KIND_TRAIN, fit, self._accept_fit(started_from))

    def _hand_out(
        self,
        server_round: int,
        kind: int,
        instruction: Instruction,
        accept: Accept,
    ) -> None:
        province = instruction.province
        assignment = self._assignments(server_round, kind, [instruction])[province]
        phase = self.channel.send(
            server_round, kind, {province: assignment}, accept, self.settings.round_timeout
        )
        version = server_round - 1 if kind == pb.TASK_KIND_TRAIN else server_round
        self._tasks[province] = InFlight(phase, version, self.buffer.version)
        self._record_bytes_down += _nbytes(instruction.parameters)

    def _accept_fit(self, started_from: int) -> Accept:
        """Checks an update as it arrives (on a handler thread), its staleness included."""

        def accept(result: ClientResult) -> ClientResult:
            check_outcome(result)
            self.strategy.check_update(result.arrays, len(self.features))
            self.buffer.check(started_from)
            return self.strategy.accept_fit(started_from + 1, result)

        return accept

    # -- answers ------------------------------------------------------------------------------

    def _settle(self, phase: Phase) -> None:
        [province] = phase.provinces.values()
        task = self._tasks.pop(province)
        if phase.kind == pb.TASK_KIND_EVALUATE:
            unscored = next(u for u in self._unscored if u.version == task.version)
            unscored.scores += phase.results
            unscored.failures += phase.failures
            return
        if phase.results and self.buffer.version < self.settings.rounds:
            self._fold(phase.results[0], task.version)
            return
        self.buffer.release(task.version)
        failures = phase.failures or [
            Failure(province, "arrived after the last version was published; not applied")
        ]
        for failure in failures:
            log.warning("%s's update dropped: %s", failure.province, failure.reason)
        target = self._unscored[-1].record if self._unscored else self._record
        target["failures"] += [{"province": f.province, "reason": f.reason} for f in failures]

    def _fold(self, result: ClientResult, started_from: int) -> None:
        began = time.perf_counter()
        self.buffer.fold(started_from, result)
        self._record_results.append(result)
        self._record["overhead_seconds"] += time.perf_counter() - began
        if self.buffer.ready and self.buffer.version + 1 < self.settings.rounds:
            self._publish()

    def _publish(self) -> None:
        began = time.perf_counter()
        contributions = self.buffer.publish()
        version, parameters = self.buffer.version, self.buffer.parameters
        self.parameters = parameters
        now = self._seconds()
        record = self._record
        record.update(
            round=version,
            clients=sorted({c.province for c in contributions}),
            updates=[_update_record(c) for c in contributions],
            train_mse=_weighted_metric(self._record_results, "train_mse"),
            seconds=now - self._since_published,
            published_seconds=now,
            bytes_down=self._record_bytes_down,
            bytes_up=sum(_nbytes(r.arrays) for r in self._record_results),
        )
        entry = {
            "round": version,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model_digest": Payload.encode(parameters).digest(),
            "participants": record["clients"],
            "updates": [{**_update_record(c), "digest": c.digest} for c in contributions],
        }
        record["overhead_seconds"] += time.perf_counter() - began
        self._unscored.append(Unscored(version, parameters, record, entry))
        self._since_published = now
        self._open_record()
        if version == self.settings.rounds:
            why = "the run published its last version; no more updates are needed"
            for task in self._tasks.values():
                if task.phase.kind == pb.TASK_KIND_TRAIN:
                    for task_id in task.phase.provinces:
                        self.channel.fail(task_id, why)

    def _open_record(self) -> None:
        """The record the next version is written into, gathering what happens until then."""
        self._record: dict[str, Any] = {"failures": [], "overhead_seconds": 0.0}
        self._record_results: list[ClientResult] = []
        self._record_bytes_down = 0

    # -- scores -------------------------------------------------------------------------------

    def _scored(self, unscored: Unscored) -> bool:
        last = unscored.version == self.settings.rounds
        answered = {r.province for r in unscored.scores} | {f.province for f in unscored.failures}
        for province in self.channel.connected():
            task = self._tasks.get(province)
            busy_before = task is not None and task.handed_at < unscored.version
            if province not in answered and (last or not busy_before):
                return False
        return True

    def _record_scored(self) -> None:
        """Record, ledger and checkpoint each version whose scores are complete, in order."""
        while self._unscored and self._scored(self._unscored[0]):
            unscored = self._unscored.pop(0)
            version, record, entry = unscored.version, unscored.record, unscored.entry
            evaluation = self.strategy.aggregate_evaluate(
                version, unscored.scores, unscored.failures
            )
            record.update(
                mse=evaluation.mse if evaluation else None,
                per_client=evaluation.per_client if evaluation else {},
                evaluated_by=sorted(r.province for r in unscored.scores),
            )
            record["failures"] += [
                {"province": f.province, "reason": f.reason} for f in unscored.failures
            ]
            self.results.add_round(record)
            entry.update(
                metrics={"mse": record["mse"], "per_client": record["per_client"]},
                failures=record["failures"],
            )
            self._last_evaluation = evaluation or self._last_evaluation
            self._complete(version, entry, self._seconds(), unscored.parameters)
            log.info(_version_line(record, self.settings.rounds))


def _update_record(contribution: Contribution) -> dict[str, Any]:
    return {
        "province": contribution.province,
        "started_from": contribution.started_from,
        "staleness": contribution.staleness,
        "weight": contribution.weight,
        "num_examples": contribution.num_examples,
    }


def _version_line(record: dict[str, Any], rounds: int) -> str:
    mse = "n/a" if record["mse"] is None else f"{record['mse']:.6g}"
    staleness = ",".join(str(u["staleness"]) for u in record["updates"])
    return (
        f"version {record['round']}/{rounds}: updates from {', '.join(record['clients'])} "
        f"(staleness {staleness}), MSE {mse} scored by {len(record['evaluated_by'])} provinces, "
        f"{record['seconds']:.3f} s"
    )
