"""The task channel in one process: each province's own work called directly, on a clock of its
own.

Tasks and outcomes still go through the wire's encoding (parameters as a payload of tensors,
the config as the proto map, the same client-side dispatch as the daemon's), so what the loop
hears is what it would hear over gRPC; only the sockets and the waiting are gone. Time is this
channel's: a task takes `seconds(province, task)` of it, and waiting moves the clock straight to
the next answer. So slowness, deadlines and the order of arrivals are set by construction, and
a run over this channel is the same every time, however loaded the machine is.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping

from client.local import LocalWork
from client.receipts import Receipt
from client.tasks import perform
from common.models.checks import UpdateError
from common.tensors import Payload, PayloadError, PayloadReceiver, receive
from proto.fedstock.v1 import federation_pb2 as pb
from server.channel import Accept, Assignment, Keep, Phase, as_it_is
from server.strategy import ClientResult, Failure

# How long a province takes for a task, on the channel's clock; math.inf: it never answers.
Seconds = Callable[[str, pb.Task], float]


def one_second(province: str, task: pb.Task) -> float:
    return 1.0


class MemoryChannel:
    """Provinces as LocalWork objects in this process; `absent` ones neither connect nor answer."""

    def __init__(
        self,
        works: Mapping[str, LocalWork],
        seconds: Seconds = one_second,
        max_update_bytes: int = 1 << 30,
    ) -> None:
        self.works = dict(works)
        self.seconds = seconds
        self.max_update_bytes = max_update_bytes
        self.now = 0.0
        self.absent: set[str] = set()
        self.updates_rejected = 0
        # Every task sent, in order: what the provinces were asked, for tests to inspect.
        self.sent: list[pb.Task] = []
        # The ledger's receipts as published; provinces in memory keep no receipts files.
        self.receipts: list[Receipt] = []
        self._open: dict[str, tuple[Phase, Assignment]] = {}
        self._due: list[tuple[float, int, str]] = []  # (answer time, order sent, task id)
        self._count = 0

    def roster(self) -> list[str]:
        return sorted(self.works)

    def connected(self) -> list[str]:
        return sorted(set(self.works) - self.absent)

    def wait_for_clients(self, count: int, timeout: float) -> list[str]:
        """Nobody joins later in memory: short of `count`, the wait runs its whole course."""
        if len(self.connected()) < count:
            self.now += timeout
        return self.connected()

    def send(
        self,
        server_round: int,
        kind: int,
        assignments: dict[str, Assignment],
        accept: Accept,
        deadline_seconds: float,
        keep: Keep = as_it_is,
    ) -> Phase:
        phase = Phase(server_round, kind, accept, keep)
        phase.open(self.now, deadline_seconds)
        for province, assignment in assignments.items():
            self._count += 1
            task_id = f"r{server_round}-{kind}-{province}-{self._count}"
            phase.add(task_id, province, assignment)
            self._open[task_id] = (phase, assignment)
            self.sent.append(assignment.task)
            took = self.seconds(province, assignment.task)
            if math.isfinite(took):
                heapq.heappush(self._due, (self.now + took, self._count, task_id))
        return phase

    def wait_any(self, phases: list[Phase], timeout: float) -> list[Phase]:
        if phases and all(phase.waiting for phase in phases):
            horizon = min([self.now + timeout, *(phase.expires for phase in phases)])
            while self._due and self._due[0][0] <= horizon:
                at, _, task_id = heapq.heappop(self._due)
                self.now = max(self.now, at)
                self._answer(task_id)
                if not all(phase.waiting for phase in phases):
                    break
            else:
                if math.isfinite(horizon):
                    self.now = max(self.now, horizon)
        for phase in phases:
            self._expire(phase)
        return [phase for phase in phases if not phase.waiting]

    def fail(self, task_id: str, reason: str) -> None:
        if task_id in self._open:
            self._close(task_id, reason)

    def publish_receipt(self, receipt: Receipt) -> None:
        self.receipts.append(receipt)

    def _answer(self, task_id: str) -> None:
        """The province does its task now and submits; late or absent answers are lost."""
        if task_id not in self._open:
            return
        phase, assignment = self._open[task_id]
        province = phase.provinces[task_id]
        if province in self.absent:
            return
        if self.now >= phase.expires:
            self._expire(phase)
            return
        payload = assignment.payload
        parameters = (
            receive(payload.header, payload.chunks(), math.inf) if payload is not None else None
        )
        outcome = perform(self.works[province], assignment.task, parameters)
        try:
            upload = Payload.encode(outcome.arrays)
            receiver = PayloadReceiver(upload.header, self.max_update_bytes)
            for chunk in upload.chunks():
                receiver.add(chunk)
            result = ClientResult(
                province,
                outcome.num_examples,
                dict(outcome.metrics),
                receiver.arrays(),
                receiver.digest(),
            )
            kept = phase.accept(result)
        except (PayloadError, UpdateError) as error:
            self.updates_rejected += 1
            self._close(task_id, f"update refused: {error}")
            return
        phase.results.append(phase.keep(kept))
        self._close(task_id)

    def _expire(self, phase: Phase) -> None:
        if self.now < phase.expires:
            return
        for task_id in list(phase.waiting):
            self._close(task_id, phase.overdue())

    def _close(self, task_id: str, failure: str | None = None) -> None:
        phase, _ = self._open.pop(task_id)
        if failure is not None:
            phase.failures.append(Failure(phase.provinces[task_id], failure))
        phase.waiting.discard(task_id)
