"""Asynchronous rounds (`--mode async`): nobody waits for the slowest, a version every K updates.

In a synchronous round every province waits for the slowest one. Here each client gets its
next task as soon as it answers, starting from the newest global version; its update enters a
buffer as a step from the version it started from, weighted down by its staleness
(server/buffer.py), and every K updates the strategy makes the next version of them, as it
would of a synchronous round's (any strategy, robust rule or compression that combines steps
from one model). `--rounds` counts versions,
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

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from common.model_settings import Shuffle
from common.tensors import Arrays
from proto.fedstock.v1 import federation_pb2 as pb
from server.buffer import Contribution, VersionBuffer
from server.channel import Accept, Phase
from server.config import Buffering
from server.schedule import (
    accept_evaluation,
    failure_records,
    nbytes,
    scores_record,
    weighted_metric,
)
from server.strategy import ClientResult, Failure, Instruction

log = logging.getLogger("fedstock.server")

if TYPE_CHECKING:
    from server.rounds import RoundLoop


@dataclass
class InFlight:
    """A task out with a client, and the newest version when it was handed out."""

    phase: Phase
    version: int  # training: the version it started from; evaluation: the version it scores
    handed_at: int
    received: list[int] = field(default_factory=list)  # bytes of its update as it arrived


@dataclass
class Unscored:
    """A published version waiting for its scores before it is recorded."""

    version: int
    parameters: Arrays
    record: dict[str, Any]
    updates: list[dict[str, Any]]
    asked: set[str] = field(default_factory=set)
    scores: list[ClientResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class Buffered:
    """FedBuff's schedule: every client busy on its own clock, a version every K updates."""

    def __init__(self, buffering: Buffering) -> None:
        self.buffering = buffering
        self._tasks: dict[str, InFlight] = {}
        self._unscored: list[Unscored] = []
        self._handed = 0

    def run(self, loop: RoundLoop, first_version: int) -> None:
        s, b = loop.settings, self.buffering
        self.loop = loop
        loop.quorum(s.min_clients)
        loop.results.update(
            asynchronous={
                "buffer_size": b.size,
                "staleness_exponent": b.exponent,
                "max_staleness": b.max_staleness,
            }
        )
        self.buffer = VersionBuffer(
            first_version - 1, loop.parameters, b.size, b.exponent, b.max_staleness
        )
        self._since_published = loop.train_seconds()
        self._open_record()
        while self.buffer.version < s.rounds or self._unscored:
            phases = [task.phase for task in self._tasks.values()]
            for phase in loop.channel.wait_any(phases, timeout=1.0):
                self._settle(phase)
            if self.buffer.ready:  # the last version, with every update that came with its K-th
                self._publish()
            self._record_scored()
            for province in loop.channel.connected():
                if province not in self._tasks:
                    self._next_task(province)
            if not self._tasks:
                loop.quorum(1)

    # -- handing out --------------------------------------------------------------------------

    def _next_task(self, province: str) -> None:
        """Scores of the versions it has not scored yet first, then training on the newest."""
        strategy = self.loop.strategy
        for unscored in self._unscored:
            if province not in unscored.asked:
                unscored.asked.add(province)
                [ask] = strategy.configure_evaluate(
                    unscored.version, unscored.parameters, [province]
                )
                self._hand_out(
                    unscored.version, pb.TASK_KIND_EVALUATE, ask, accept_evaluation(strategy)
                )
                return
        if self.buffer.version >= self.loop.settings.rounds:
            return
        started_from, parameters = self.buffer.start()
        [fit] = strategy.configure_fit(started_from + 1, parameters, [province])
        # A client may train twice from one version: each task shuffles its batches anew.
        self._handed += 1
        fit = replace(fit, config={**fit.config, **Shuffle(self._handed).to_config()})
        received: list[int] = []

        def arrived(result: ClientResult) -> None:
            """Its staleness is checked on arrival, when the client can still be told."""
            self.buffer.check(started_from)
            received.append(nbytes(result.arrays))

        accept = self.loop.accept_update(started_from + 1, arrived)
        self._hand_out(started_from + 1, pb.TASK_KIND_TRAIN, fit, accept, received)

    def _hand_out(
        self,
        server_round: int,
        kind: int,
        instruction: Instruction,
        accept: Accept,
        received: list[int] | None = None,
    ) -> None:
        loop, province = self.loop, instruction.province
        assignment = loop.assignments(server_round, kind, [instruction])[province]
        phase = loop.channel.send(
            server_round, kind, {province: assignment}, accept, loop.settings.round_timeout
        )
        version = server_round - 1 if kind == pb.TASK_KIND_TRAIN else server_round
        self._tasks[province] = InFlight(phase, version, self.buffer.version, received or [])
        self._record_bytes_down += nbytes(instruction.parameters)

    # -- answers ------------------------------------------------------------------------------

    def _settle(self, phase: Phase) -> None:
        [province] = phase.provinces.values()
        task = self._tasks.pop(province)
        if phase.kind == pb.TASK_KIND_EVALUATE:
            unscored = next(u for u in self._unscored if u.version == task.version)
            unscored.scores += phase.results
            unscored.failures += phase.failures
            return
        if phase.results and self.buffer.version < self.loop.settings.rounds:
            self._fold(phase.results[0], task)
            return
        self.buffer.release(task.version)
        failures = phase.failures or [
            Failure(province, "arrived after the last version was published; not applied")
        ]
        for failure in failures:
            log.warning("%s's update dropped: %s", failure.province, failure.reason)
        target = self._unscored[-1].record if self._unscored else self._record
        target["failures"] += failure_records(failures)

    def _fold(self, result: ClientResult, task: InFlight) -> None:
        began = time.perf_counter()
        self.buffer.fold(task.version, result, self.loop.keep_update(self.buffer.version + 1))
        self._record_results.append(result)
        self._record_bytes_up += sum(task.received)
        self._record["overhead_seconds"] += time.perf_counter() - began
        if self.buffer.ready and self.buffer.version + 1 < self.loop.settings.rounds:
            self._publish()

    def _publish(self) -> None:
        loop, began = self.loop, time.perf_counter()
        version = self.buffer.version + 1

        def aggregate(results: list[ClientResult], current: Arrays | None) -> Arrays | None:
            # `current`, the buffer's newest version, is the loop's model: the loop aggregates.
            return loop.aggregate(version, results, [])

        contributions = self.buffer.publish(aggregate)
        parameters = self.buffer.parameters
        now = loop.train_seconds()
        record = self._record
        record.update(
            round=version,
            clients=sorted({c.province for c in contributions}),
            updates=[_update_record(c) for c in contributions],
            train_mse=weighted_metric(self._record_results, "train_mse"),
            seconds=now - self._since_published,
            published_seconds=now,
            bytes_down=self._record_bytes_down,
            bytes_up=self._record_bytes_up,
        )
        asked = loop.channel.roster()
        record["disclosure"] = loop.strategy.round_disclosure(version, asked, record["clients"])
        record.update(loop.strategy.round_report(version))
        updates = [{**_update_record(c), "digest": c.digest} for c in contributions]
        record["overhead_seconds"] += time.perf_counter() - began
        self._unscored.append(Unscored(version, parameters, record, updates))
        self._since_published = now
        self._open_record()
        if version == loop.settings.rounds:
            why = "the run published its last version; no more updates are needed"
            for task in self._tasks.values():
                if task.phase.kind == pb.TASK_KIND_TRAIN:
                    for task_id in task.phase.provinces:
                        loop.channel.fail(task_id, why)

    def _open_record(self) -> None:
        """The record the next version is written into, gathering what happens until then."""
        self._record: dict[str, Any] = {"failures": [], "overhead_seconds": 0.0}
        self._record_results: list[ClientResult] = []
        self._record_bytes_down = 0
        self._record_bytes_up = 0

    # -- scores -------------------------------------------------------------------------------

    def _scored(self, unscored: Unscored) -> bool:
        last = unscored.version == self.loop.settings.rounds
        answered = {r.province for r in unscored.scores} | {f.province for f in unscored.failures}
        for province in self.loop.channel.connected():
            task = self._tasks.get(province)
            busy_before = task is not None and task.handed_at < unscored.version
            if province not in answered and (last or not busy_before):
                return False
        return True

    def _record_scored(self) -> None:
        """Record, ledger and checkpoint each version whose scores are complete, in order."""
        while self._unscored and self._scored(self._unscored[0]):
            unscored = self._unscored.pop(0)
            evaluation = self.loop.evaluate(
                self.loop.strategy, unscored.version, unscored.scores, unscored.failures
            )
            record = unscored.record
            record.update(
                **scores_record(evaluation),
                evaluated_by=sorted(r.province for r in unscored.scores),
            )
            record["failures"] += failure_records(unscored.failures)
            self.loop.recorder.commit(
                record, unscored.updates, unscored.parameters, evaluation, self.loop.run_state()
            )


def _update_record(contribution: Contribution) -> dict[str, Any]:
    return {
        "province": contribution.province,
        "started_from": contribution.started_from,
        "staleness": contribution.staleness,
        "weight": contribution.weight,
        "num_examples": contribution.num_examples,
    }
