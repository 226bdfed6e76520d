"""How a province daemon exchanges tasks and outcomes with the server once it has joined.

Two links carry the same messages. The session stream (contract version 2) keeps one call open
for the whole session: a task comes down for each `next`, a reply for each outcome, and a
heartbeat goes up whenever the client has been quiet, so the server's idle timeout only ends
streams whose client is gone. The unary link makes a long-poll GetTask and a Submit call per
task (version 1), for servers older than the stream. Either raises grpc.RpcError when the
server refuses or the connection breaks; the daemon decides what to do about it.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import grpc

from client.tasks import ClientError
from common.tensors import Arrays, Payload, PayloadReceiver
from common.wire import PROTOCOL_VERSION
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

    def submit(self, header: pb.Outcome, payload: Payload | None) -> None:
        """Send an outcome and its arrays; returns once the server has answered."""
        ...

    def close(self) -> None: ...


def receive_task(
    first: pb.TaskChunk | pb.SessionDown, rest: Iterator, max_bytes: int, to_the_end: bool
) -> tuple[pb.Task, Arrays | None]:
    """A task and its parameters from the messages that carry them. A GetTask call is read to
    its end (leaving early would cancel it, and the server would take the task as undelivered);
    a stream only as far as the parameters the task announced."""
    if first.WhichOneof("part") != "task":
        raise ClientError("the server sent parameters before their task")
    task = first.task
    receiver = PayloadReceiver(task.parameters, max_bytes) if task.HasField("parameters") else None
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

    def submit(self, header: pb.Outcome, payload: Payload | None) -> None:
        def chunks() -> Iterator[pb.SubmitChunk]:
            yield pb.SubmitChunk(outcome=header)
            if payload is not None:
                for data in payload.chunks():
                    yield pb.SubmitChunk(data=data)

        self._stub.Submit(chunks(), timeout=self._transfer_timeout, metadata=self._metadata)

    def close(self) -> None:
        """Nothing stays open between calls."""


class StreamLink:
    """Contract version 2: one Session stream, opened on first use and again after it broke.

    At most one task is in flight: the client asks for the next only after answering the last,
    but at once, behind the outcome's last chunk, not after the server's reply. The server
    reads its stream in order, so it replies first; asking then would put a round trip (and
    the receipts' flush after a training task) between the last province's outcome and its
    next task, which the whole federation waits for.
    """

    def __init__(
        self, stub: pb_grpc.FederationStub, metadata: Metadata, max_model_bytes: int
    ) -> None:
        self._stub, self._metadata = stub, metadata
        self._max_model_bytes = max_model_bytes
        self._heartbeat_seconds = FIRST_HEARTBEAT_SECONDS
        self._outbox: queue.SimpleQueue[pb.SessionUp | None] | None = None
        self._replies: Iterator[pb.SessionDown] | None = None
        self._asked = False  # the open stream already carries a `next` behind an outcome

    def next_task(self) -> tuple[pb.Task, Arrays | None]:
        asked, self._asked = self._asked, False
        replies = self._replies if asked else self._send(pb.SessionUp(next=pb.TaskRequest()))
        return self._guard(
            lambda: receive_task(next(replies), replies, self._max_model_bytes, to_the_end=False)
        )

    def submit(self, header: pb.Outcome, payload: Payload | None) -> None:
        replies = self._send(pb.SessionUp(outcome=header))
        for data in payload.chunks() if payload is not None else ():
            self._outbox.put(pb.SessionUp(data=data))
        self._outbox.put(pb.SessionUp(next=pb.TaskRequest()))
        self._asked = True
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
            yield pb.SessionUp(open=pb.SessionOpen(protocol_version=PROTOCOL_VERSION))
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
