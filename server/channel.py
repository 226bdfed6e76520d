"""The round loop's one port to the provinces: send tasks, hear of each as it closes.

Two implementations stand behind it. The coordinator (server/coordinator.py) carries tasks to
client daemons over gRPC; the in-memory channel (server/memory.py) does each province's work in
this process, so the loop, its schedules and its strategies can be tested without a network.
The loop never knows which one it talks to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from client.receipts import Receipt
from common.tensors import Payload
from proto.fedstock.v1 import federation_pb2 as pb
from server.strategy import ClientResult, Failure

log = logging.getLogger("fedstock.server")

# Checks an outcome as it arrives and returns what to keep of it (a strategy may fold arrays in
# at once); raises UpdateError or PayloadError to refuse it.
Accept = Callable[[ClientResult], ClientResult]
# What a phase keeps of an accepted outcome once it is sure to count (its task still open),
# run under the channel's lock: a strategy may fold the update into its running sum there.
Keep = Callable[[ClientResult], ClientResult]


def as_it_is(result: ClientResult) -> ClientResult:
    return result


@dataclass
class Assignment:
    """One province's task and the parameters that go with it, encoded once for all."""

    task: pb.Task
    payload: Payload | None


@dataclass
class Phase:
    """One kind of task sent to one or more provinces, open until answered or expired."""

    server_round: int
    kind: int
    accept: Accept
    keep: Keep = as_it_is
    provinces: dict[str, str] = field(default_factory=dict)  # task id -> province
    waiting: set[str] = field(default_factory=set)
    # Answered tasks whose outcomes are being kept (folded) now: sure to count, so no deadline
    # closes them; they leave `waiting` once kept.
    keeping: set[str] = field(default_factory=set)
    results: list[ClientResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    deadline_seconds: float = math.inf
    expires: float = math.inf  # on the channel's clock, after which unanswered tasks fail

    def open(self, now: float, deadline_seconds: float) -> None:
        """Start the phase's deadline at `now` on its channel's clock."""
        self.deadline_seconds, self.expires = deadline_seconds, now + deadline_seconds

    def add(self, task_id: str, province: str, assignment: Assignment) -> None:
        """One province's task joins the phase, named and given the phase's deadline."""
        assignment.task.task_id = task_id
        assignment.task.deadline_seconds = self.deadline_seconds
        self.provinces[task_id] = province
        self.waiting.add(task_id)

    def overdue(self) -> str:
        """Why an unanswered task of this phase failed."""
        return f"no answer within the {self.deadline_seconds:g} s deadline"


class TaskChannel(Protocol):
    """What the round loop needs of the provinces, however it reaches them."""

    def roster(self) -> list[str]:
        """Every member of the federation, connected or not, sorted."""
        ...

    def connected(self) -> list[str]:
        """The provinces that can take a task now, sorted."""
        ...

    def wait_for_clients(self, count: int, timeout: float) -> list[str]:
        """Connected provinces once `count` are there, or whoever is there when time runs out."""
        ...

    def send(
        self,
        server_round: int,
        kind: int,
        assignments: dict[str, Assignment],
        accept: Accept,
        deadline_seconds: float,
        keep: Keep = as_it_is,
    ) -> Phase:
        """Give each province its task and return at once; `wait_any` tells when it closed.
        Each outcome passes `accept` as it arrives and `keep` once it counts."""
        ...

    def wait_any(self, phases: list[Phase], timeout: float) -> list[Phase]:
        """Those of `phases` that have closed, after waiting up to `timeout` for news unless one
        already has; tasks past their deadline close as failed."""
        ...

    def fail(self, task_id: str, reason: str) -> None:
        """Close an open task as failed (the run no longer needs its answer)."""
        ...

    def publish_receipt(self, receipt: Receipt) -> None:
        """A new ledger entry's receipt, for every province to keep (client/receipts.py)."""
        ...


def gather(
    channel: TaskChannel,
    server_round: int,
    kind: int,
    assignments: dict[str, Assignment],
    accept: Accept,
    deadline_seconds: float,
    keep: Keep = as_it_is,
) -> tuple[list[ClientResult], list[Failure]]:
    """Send a phase and wait until every province answered or the deadline passed."""
    phase = channel.send(server_round, kind, assignments, accept, deadline_seconds, keep)
    while phase.waiting:
        channel.wait_any([phase], timeout=deadline_seconds)
    for failure in phase.failures:
        log.warning("round %d: %s dropped: %s", server_round, failure.province, failure.reason)
    # In province order, not arrival order: what is summed from them repeats to the last bit.
    return sorted(phase.results, key=lambda r: r.province), list(phase.failures)
