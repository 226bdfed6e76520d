"""How a province daemon exchanges tasks and outcomes with the server once it has joined.

Two links carry the same messages. The session stream keeps one call open for the whole
session, and a heartbeat goes up whenever the client has been quiet, so the server's idle
timeout only ends streams whose client is gone. On a version 3 stream the server answers each
outcome with the next task, and a payload that fits one chunk travels inside its task or
outcome: two messages a task where version 2 takes six (`next`, task, parameters, outcome,
update, reply), which the stream still speaks to a version 2 server. The unary link makes a
long-poll GetTask and a Submit call per task (version 1), for servers older than the stream.
Either raises grpc.RpcError when the server refuses or the connection breaks; the daemon
decides what to do about it.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import grpc

from client.tasks import ClientError
from common.tensors import Arrays, Payload, PayloadReceiver
from common.wire import ANSWERED_BY_TASK_VERSION
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc

TRANSPORTS = ("stream", "unary")
Metadata = tuple[tuple[str, str], ...]
# Until the server says how often it wants one (SessionOpened.heartbeat_seconds).
FIRST_HEARTBEAT_SECONDS = 10.0
T = TypeVar("T")


class Link(Protocol):
    def next_task(self) -> tuple[pb.Task, Arrays | None]:
        """The next task (WAIT and STOP included) and the parameters that came with it."""
        ...

    def submit(self, header: pb.Outcome, payload: Payload | None, sent: Callable[[], None]) -> None:
        """Send an outcome and its arrays, call `sent` while the server is busy with them, and
        return once it has answered."""
        ...

    def close(self) -> None: ...


def receive_task(
    first: pb.TaskChunk | pb.SessionDown, rest: Iterator, max_bytes: int, to_the_end: bool
) -> tuple[pb.Task, Arrays | None]:
    """A task and its parameters from the messages that carry them. A GetTask call is read to
    its end (leaving early would cancel it, and the server would take the task as undelivered);
    a stream only as far as the parameters the task announced (none after parameters the
    task carries inline)."""
    if first.WhichOneof("part") != "task":
        raise ClientError("the server sent parameters before their task")
    task = first.task
    receiver = PayloadReceiver(task.parameters, max_bytes) if task.HasField("parameters") else None
    if task.inline_data:
        if receiver is None:
            raise ClientError("the server sent inline parameters without their header")
        receiver.add(task.inline_data)
    while to_the_end or (receiver is not None and not receiver.complete):
        chunk = next(rest, None)
        if chunk is None:
            break
        if receiver is None or chunk.WhichOneof("part") != "data":
            raise ClientError("the server sent an unexpected message after the task")
        receiver.add(chunk.data)
    return task, receiver.arrays() if receiver else None


class UnaryLink:
    """Contract version 1: a long poll per task and a Submit call per outcome."""

    def __init__(
        self,
        stub: pb_grpc.FederationStub,
        metadata: Metadata,
        poll_seconds: float,
        transfer_timeout: float,
        max_model_bytes: int,
    ) -> None:
        self._stub, self._metadata = stub, metadata
        self._poll_seconds, self._transfer_timeout = poll_seconds, transfer_timeout
        self._max_model_bytes = max_model_bytes

    def next_task(self) -> tuple[pb.Task, Arrays | None]:
        call = self._stub.GetTask(
            pb.TaskRequest(),
            timeout=self._poll_seconds + self._transfer_timeout,
            metadata=self._metadata,
        )
        return receive_task(next(call), call, self._max_model_bytes, to_the_end=True)

    def submit(self, header: pb.Outcome, payload: Payload | None, sent: Callable[[], None]) -> None:
        def chunks() -> Iterator[pb.SubmitChunk]:
            yield pb.SubmitChunk(outcome=header)
            if payload is not None:
                for data in payload.chunks():
                    yield pb.SubmitChunk(data=data)

        self._stub.Submit(chunks(), timeout=self._transfer_timeout, metadata=self._metadata)
        sent()  # after the answer: gRPC reads `chunks` on a thread of its own

    def close(self) -> None:
        """Nothing stays open between calls."""


class StreamLink:
    """The Session stream, opened on first use and again after it broke, in `version` (2 or 3:
    the older of this client's and the server's, as Join told).

    At most one task is in flight: the client asks for the next only after answering the last.
    On version 3 the server's answer to an outcome is the next task, read by `submit` and kept
    for `next_task`. On version 2 the client asks at once, behind the outcome's last chunk,
    not after the server's reply: the server reads its stream in order, so it replies first;
    asking then would put a round trip between the last province's outcome and its next task,
    which the whole federation waits for.
    """

    def __init__(
        self, stub: pb_grpc.FederationStub, metadata: Metadata, max_model_bytes: int, version: int
    ) -> None:
        self._stub, self._metadata = stub, metadata
        self._max_model_bytes = max_model_bytes
        self._version = version
        self._answered_by_task = version >= ANSWERED_BY_TASK_VERSION
        self._heartbeat_seconds = FIRST_HEARTBEAT_SECONDS
        self._outbox: queue.SimpleQueue[pb.SessionUp | None] | None = None
        self._replies: Iterator[pb.SessionDown] | None = None
        self._asked = False  # version 2: the open stream already carries a `next`
        self._answer: tuple[pb.Task, Arrays | None] | None = None  # version 3: the next task

    def next_task(self) -> tuple[pb.Task, Arrays | None]:
        if self._answer is not None:
            answer, self._answer = self._answer, None
            return answer
        asked, self._asked = self._asked, False
        replies = self._replies if asked else self._send(pb.SessionUp(next=pb.TaskRequest()))
        return self._guard(lambda: self._receive(replies))

    def submit(self, header: pb.Outcome, payload: Payload | None, sent: Callable[[], None]) -> None:
        message = pb.SessionUp(outcome=header)
        inline = self._answered_by_task and payload is not None and payload.fits_one_chunk
        if inline:
            message.outcome.inline_data = payload.blob
        replies = self._send(message)
        for data in payload.chunks() if payload is not None and not inline else ():
            self._outbox.put(pb.SessionUp(data=data))
        if self._answered_by_task:
            sent()
            self._answer = self._guard(lambda: self._receive(replies))
            return
        self._outbox.put(pb.SessionUp(next=pb.TaskRequest()))
        self._asked = True
        sent()
        reply = self._guard(lambda: next(replies))
        if reply.WhichOneof("part") != "reply":
            self.close()
            raise ClientError("the server answered an outcome with something else than a reply")

    def close(self) -> None:
        """End the stream (the server then frees its handler); the next use opens a new one."""
        if self._outbox is not None:
            self._outbox.put(None)
        if isinstance(self._replies, grpc.Call):
            self._replies.cancel()
        self._outbox = self._replies = None
        self._asked = False
        self._answer = None

    def _receive(self, replies: Iterator[pb.SessionDown]) -> tuple[pb.Task, Arrays | None]:
        return receive_task(next(replies), replies, self._max_model_bytes, to_the_end=False)

    def _send(self, message: pb.SessionUp) -> Iterator[pb.SessionDown]:
        if self._replies is None:
            self._open()
        self._outbox.put(message)
        return self._replies

    def _guard(self, read: Callable[[], T]) -> T:
        """`read()`, closing the stream when it fails so the next use starts a fresh one."""
        try:
            return read()
        except StopIteration:
            self.close()
            raise ClientError("the server ended the session stream without a status") from None
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        outbox: queue.SimpleQueue[pb.SessionUp | None] = queue.SimpleQueue()

        def requests() -> Iterator[pb.SessionUp]:
            yield pb.SessionUp(open=pb.SessionOpen(protocol_version=self._version))
            while True:
                try:
                    message = outbox.get(timeout=self._heartbeat_seconds)
                except queue.Empty:
                    message = pb.SessionUp(heartbeat=pb.Heartbeat())
                if message is None:
                    return
                yield message

        self._outbox, self._replies = (
            outbox,
            self._stub.Session(requests(), metadata=self._metadata),
        )
        opened = self._guard(lambda: next(self._replies))
        if opened.WhichOneof("part") != "opened":
            self.close()
            raise ClientError("the server's session stream did not start with opened")
        self._heartbeat_seconds = opened.opened.heartbeat_seconds or self._heartbeat_seconds
