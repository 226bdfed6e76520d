"""A hostile participant written from the .proto contract alone, as an outsider would write it.

It joins like any province, then answers each task with the next lie it was given; every
refusal (status code and message) is kept for the test to inspect. The next-day split's date
questions (rows per year, then per day) it answers on its own with no rows at all, which the
server refuses (a province has at least one row), so the cutoff is the honest provinces' alone
and the lies start with the statistics proper.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from common import timesplit
from common.launch import LocalFederation
from common.settings import DayCounts
from common.tensors import Payload
from common.wire import SESSION_METADATA_KEY, from_config
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Lie:
    """One answer: the count, metrics and arrays to claim for a task."""

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def statistics_shapes(columns: int) -> dict[str, np.ndarray]:
    """Arrays shaped like a province's sums (n, Σz, Σzzᵀ), for lies about their values."""
    return {
        "count": np.array(1000.0),
        "sum": np.full(columns, 10.0),
        "cross": np.eye(columns) * 1000.0,
    }


class Liar(threading.Thread):
    """Joins as `province` declaring `rows`, then answers task after task with `lies(task)`."""

    def __init__(
        self, address: str, province: str, rows: int, lies: Callable[[pb.Task], Lie | None]
    ) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.province, self.rows, self.lies = province, rows, lies
        self.refusals: list[tuple[int, grpc.StatusCode, str]] = []
        self.date_refusals: list[tuple[grpc.StatusCode, str]] = []
        self.error: BaseException | None = None
        self.joined = threading.Event()

    def run(self) -> None:
        try:
            self._lie()
        except BaseException as error:  # surfaced by the test, not lost in the thread
            self.error = error
        finally:
            self.channel.close()

    def _lie(self) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=120)
        request = pb.JoinRequest(province=self.province, rows=self.rows)
        metadata = ((SESSION_METADATA_KEY, self.stub.Join(request, timeout=30).session),)
        self.joined.set()
        while True:
            chunks = list(self.stub.GetTask(pb.TaskRequest(), timeout=120, metadata=metadata))
            task = chunks[0].task
            if task.kind == pb.TASK_KIND_STOP:
                return
            dates = DayCounts.sent(from_config(task.config)) is not None
            if dates:
                lie: Lie | None = no_dates(task)
            else:
                lie = None if task.kind == pb.TASK_KIND_WAIT else self.lies(task)
            if lie is None:
                continue
            try:
                self.stub.Submit(submission(task, lie), timeout=120, metadata=metadata)
            except grpc.RpcError as error:
                if dates:
                    self.date_refusals.append((error.code(), error.details()))
                else:
                    self.refusals.append((task.kind, error.code(), error.details()))


def run_beside(liar: Liar, federation: LocalFederation, honest: Sequence[str]) -> None:
    """Start `liar`, then the honest provinces' clients once it has joined, and wait for the run
    to end with the server and every honest client exiting 0."""
    liar.start()
    assert liar.joined.wait(timeout=120), liar.error
    for province in honest:
        federation.start_client(province)
    codes = federation.wait(timeout=300)
    liar.join(timeout=60)
    assert codes == {"server": 0, **{p: 0 for p in honest}}, codes


def no_dates(task: pb.Task) -> Lie:
    """A date question answered with no rows: counts of zero, of the shape asked."""
    asked = DayCounts.from_config(from_config(task.config))
    kind = asked.day_counts
    if kind == "years":
        shape: tuple[int, ...] = (timesplit.YEARS,)
    else:
        shape = (len(asked.years()), timesplit.bins(asked.width()))
    return Lie(0, {}, {"count": np.array(0.0), kind: np.zeros(shape)})


def submission(task: pb.Task, lie: Lie) -> Iterator[pb.SubmitChunk]:
    payload = Payload.encode(lie.arrays) if lie.arrays else None
    yield pb.SubmitChunk(
        outcome=pb.Outcome(
            task_id=task.task_id,
            round=task.round,
            kind=task.kind,
            num_examples=lie.num_examples,
            metrics=lie.metrics,
            parameters=payload.header if payload else None,
        )
    )
    for data in payload.chunks() if payload else ():
        yield pb.SubmitChunk(data=data)
