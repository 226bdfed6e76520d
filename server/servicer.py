"""The Federation gRPC service: transport only, no model knowledge.

Every refusal carries a status code and a sentence a person can act on; nothing that arrives is
trusted before it is checked, and nothing is ever unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc
from google.protobuf.message import Message

from common.bounded import bounded
from common.models.checks import UpdateError
from common.tensors import PayloadError, PayloadReceiver
from common.tls import peer_common_name
from common.wire import (
    ANSWERED_BY_TASK_VERSION,
    PROTOCOL_VERSION,
    SESSION_METADATA_KEY,
    SOFTWARE_VERSION,
    STREAM_PROTOCOL_VERSION,
)
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.admission import Admission
from server.buffer import StaleUpdate
from server.channel import Phase
from server.checks import check_outcome, check_rows
from server.coordinator import (
    MAX_STREAMS_PER_SESSION,
    ClientSession,
    Coordinator,
    JoinRefused,
)
from server.limits import Activity
from server.strategy import ClientResult

log = logging.getLogger("fedstock.server")

SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name


def _serialized(message: Message | bytes) -> bytes:
    """A response message's wire bytes; bytes are a message serialized already
    (`Payload.frames`), sent as they are."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class DataPart:
    """An upload message that carries chunk bytes alone (`SubmitChunk` or `SessionUp` with only
    `data` set), its bytes a view on the message gRPC handed up. protobuf's parser would copy
    them twice more, into the message and out of it again: 2 MiB more a 1 MiB chunk, for every
    stream uploading at once."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data

    @staticmethod
    def WhichOneof(group: str) -> str:  # named as the message's own, which the handlers call
        return "data"


def upload_reader(message: type[Message]) -> Callable[[bytes], Message | DataPart]:
    """How the server reads a request of `message` (SubmitChunk, SessionUp): one of the `data`
    field alone as a DataPart on its bytes, anything else as protobuf parses it, so what the
    handler sees is what the parsed message would say."""
    tag = message.DESCRIPTOR.fields_by_name["data"].number << 3 | 2  # length-delimited
    if tag > 0x7F:
        raise ValueError(f"{message.__name__}.data's tag takes more than one byte")

    def read(raw: bytes) -> Message | DataPart:
        if raw[:1] == bytes((tag,)):
            length, shift, at = 0, 0, 1
            while at < min(len(raw), 6):  # protobuf takes a length of at most five bytes
                byte = raw[at]
                at += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    if at + length == len(raw):
                        return DataPart(memoryview(raw)[at:])
                    break
                shift += 7
        return message.FromString(raw)

    return read


def add_to_server(servicer: FederationServicer, server: grpc.Server) -> None:
    """Serve `servicer` as the published Federation service, as the generated
    `add_FederationServicer_to_server` does, except that GetTask and Session may also answer
    with messages serialized already: a payload's chunks go to every stream of a phase from
    one set of bytes, the same bytes the message would serialize to; and upload chunks are read
    without protobuf's copies (`upload_reader`)."""
    kinds = {
        "Join": (grpc.unary_unary_rpc_method_handler, pb.JoinRequest, pb.JoinReply),
        "GetTask": (grpc.unary_stream_rpc_method_handler, pb.TaskRequest, None),
        "Submit": (grpc.stream_unary_rpc_method_handler, pb.SubmitChunk, pb.SubmitReply),
        "Session": (grpc.stream_stream_rpc_method_handler, pb.SessionUp, None),
    }
    handlers = {
        name: handler(
            getattr(servicer, name),
            request_deserializer=(
                upload_reader(request) if name in ("Submit", "Session") else request.FromString
            ),
            response_serializer=reply.SerializeToString if reply else _serialized,
        )
        for name, (handler, request, reply) in kinds.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        coordinator: Coordinator,
        max_update_bytes: int,
        mutual_tls: bool,
        admission: Admission | None = None,
        activity: Activity | None = None,
    ) -> None:
        self._coordinator = coordinator
        # Heartbeats thrice per idle timeout; without one (a servicer outside build_server) no
        # stream is cancelled for silence, and a heartbeat every 20 s is asked for.
        self._activity = activity
        self._heartbeat_seconds = activity.idle_seconds / 3 if activity else 20.0
        self._max_update_bytes = max_update_bytes
        self._mutual_tls = mutual_tls
        # Every upload in flight together; by default as much as one update of the largest size.
        self._admission = admission or Admission(max_update_bytes)
        if self._admission.limit < max_update_bytes:
            # An update of the largest size would wait for room that never comes.
            raise ValueError(
                f"an in-flight budget of {self._admission.limit} bytes (--max-inflight-mb) "
                f"cannot admit an update of {max_update_bytes} bytes (--max-update-mb)"
            )

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        try:
            province = self._coordinator.members.check(request.province)
            check_rows(request.rows)
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(error))
        certified = self._certified_province(context)
        if certified is not None and certified != province:
            log.warning(
                "%s (certified) tried to join as %s from %s", certified, province, context.peer()
            )
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"your certificate is for {certified}; you cannot join as {province}",
            )
        try:
            client = self._coordinator.join(province, request.rows, request.software_version)
        except JoinRefused as refusal:
            log.warning("join refused for %s from %s: %s", province, context.peer(), refusal)
            context.abort(grpc.StatusCode.ALREADY_EXISTS, bounded(refusal))
        log.info(
            "%s joined from %s (%d rows, version %s)",
            province,
            context.peer(),
            request.rows,
            request.software_version or "unknown",
        )
        return pb.JoinReply(
            session=client.session,
            server_version=SOFTWARE_VERSION,
            poll_seconds=self._coordinator.poll_seconds,
            protocol_version=PROTOCOL_VERSION,
        )

    def GetTask(
        self, request: pb.TaskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TaskChunk | bytes]:
        client = self._authenticate(context)
        yield from self._deliver(client, context, pb.TaskChunk)

    def Submit(
        self, request_iterator: Iterator[pb.SubmitChunk | DataPart], context: grpc.ServicerContext
    ) -> pb.SubmitReply:
        client = self._authenticate(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "outcome":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "a submission must start with its outcome"
            )
        return self._answer(client, first.outcome, request_iterator, context, to_the_end=True)

    def Session(
        self, request_iterator: Iterator[pb.SessionUp | DataPart], context: grpc.ServicerContext
    ) -> Iterator[pb.SessionDown | bytes]:
        """GetTask and Submit as messages of one stream: a task for each `next`, and for each
        outcome a reply (version 2) or the next task itself (version 3). The session is
        checked when the stream opens and again for every message, so a session replaced by a
        newer Join loses its stream at once."""
        client = self._authenticate(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "open":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session stream must start with open")
        version = first.open.protocol_version
        if not STREAM_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this server's session stream speaks contract versions "
                f"{STREAM_PROTOCOL_VERSION} to {PROTOCOL_VERSION}; the client says it speaks "
                f"{version}: "
                + (
                    "use GetTask and Submit instead"
                    if version < STREAM_PROTOCOL_VERSION
                    else f"open the stream with version {PROTOCOL_VERSION}, as Join said"
                ),
            )
        answered_by_task = version >= ANSWERED_BY_TASK_VERSION
        if self._activity is not None:
            self._activity.on_silence(context, lambda: self._silent(client))
        yield pb.SessionDown(
            opened=pb.SessionOpened(
                protocol_version=version, heartbeat_seconds=self._heartbeat_seconds
            )
        )
        for message in request_iterator:
            if self._coordinator.client_for(client.session) is not client:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this session was replaced by a newer Join of the same province",
                )
            part = message.WhichOneof("part")
            if part == "next":
                yield from self._deliver(client, context, pb.SessionDown, answered_by_task)
            elif part == "outcome":
                reply = self._answer(client, message.outcome, request_iterator, context)
                if answered_by_task:
                    yield from self._deliver(client, context, pb.SessionDown, inline=True)
                else:
                    yield pb.SessionDown(reply=reply)
            elif part != "heartbeat":
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a session stream takes next, an outcome or a heartbeat here, not {part}",
                )

    def _silent(self, client: ClientSession) -> None:
        """A session stream that sent nothing, not even a heartbeat, for the idle timeout: its
        client is hung (stopped, frozen, cut off), so its task fails now, not at the deadline."""
        seconds = self._activity.idle_seconds if self._activity else 0.0
        why = (
            f"no heartbeat from {client.province} for {seconds:g} s (--idle-timeout): "
            "taken for hung, its task failed without waiting for the round's deadline"
        )
        if self._coordinator.fail_silent(client, seconds, why):
            log.warning("%s", why)

    def _deliver(
        self,
        client: ClientSession,
        context: grpc.ServicerContext,
        message: type[pb.TaskChunk] | type[pb.SessionDown],
        inline: bool = False,
    ) -> Iterator[pb.TaskChunk | pb.SessionDown | bytes]:
        """The client's next task (or WAIT, or STOP), then its parameters, or (`inline`, a
        version 3 stream) parameters that fit one chunk inside the task's message; a task that
        did not reach the client whole fails at once rather than at its deadline."""
        assignment = self._coordinator.next_assignment(
            client, context.is_active, streamed=message is pb.SessionDown
        )
        payload = assignment.payload
        delivered = False
        try:
            header = message(task=assignment.task)
            if inline and payload is not None and payload.fits_one_chunk:
                header.task.inline_data = payload.blob
                payload = None
            yield header
            if payload is not None:
                # Serialized once for every stream of the phase; `add_to_server`'s serializer
                # sends them as they are.
                yield from payload.frames(message)
            delivered = True
        finally:
            if not delivered and assignment.task.task_id:
                self._coordinator.fail(
                    assignment.task.task_id, "connection lost while the task was being sent"
                )

    def _answer(
        self,
        client: ClientSession,
        outcome: pb.Outcome,
        chunks: Iterator[pb.SubmitChunk | pb.SessionUp | DataPart],
        context: grpc.ServicerContext,
        to_the_end: bool = False,
    ) -> pb.SubmitReply:
        """Check an outcome and its chunks and hand it to its phase. Submit reads `chunks` to
        the call's end; a stream reads only as many as the outcome announced."""
        phase = self._coordinator.task_phase(outcome.task_id)
        if phase is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {bounded(outcome.task_id, 80)!r} is not open: it is unknown, already "
                "answered, or its round's deadline has passed",
            )
        if phase.provinces.get(outcome.task_id) != client.province:
            log.warning("%s submitted for a task that is not its own", client.province)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "this task was not given to you")
        if outcome.round != phase.server_round or outcome.kind != phase.kind:
            self._refuse(
                context,
                outcome.task_id,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"outcome names round {outcome.round}, kind {outcome.kind}; the task was "
                f"round {phase.server_round}, kind {phase.kind}",
            )
        if outcome.error:
            why = f"the client failed: {bounded(outcome.error)}"
            log.warning("%s: %s", client.province, why)
            self._coordinator.fail(outcome.task_id, why)
            return pb.SubmitReply(accepted=False, message="the failure is recorded")
        if not self._coordinator.claim(outcome.task_id):
            context.abort(
                grpc.StatusCode.ABORTED,
                "another upload is answering this task; it is still open if that one breaks",
            )
        reserved = 0
        try:
            check_outcome(outcome.num_examples, outcome.metrics, client.rows)
            receiver = PayloadReceiver(outcome.parameters, self._max_update_bytes)
            reserved = self._admit(receiver.announced, phase, outcome.task_id, context)
            if outcome.inline_data:
                receiver.add(outcome.inline_data)
            while to_the_end or not receiver.complete:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                if self._coordinator.task_phase(outcome.task_id) is None:
                    # Failed or past its deadline: the rest of its upload may not hold the room.
                    context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "the task closed while its upload was arriving (its deadline passed or "
                        "it failed); the upload is dropped",
                    )
                if chunk.WhichOneof("part") != "data":
                    raise PayloadError("only data chunks may follow the outcome")
                receiver.add(chunk.data)
            if not receiver.complete and (not to_the_end or not context.is_active()):
                # A session stream that ends mid-upload, cancelled or half-closed (whichever the
                # server hears first), is a client going away: a broken upload. A Submit the
                # client closed short is a malformed one, refused below.
                raise ConnectionError(
                    f"the upload ended after {receiver.received} of {receiver.announced} bytes"
                )
            result = phase.accept(
                ClientResult(
                    client.province,
                    outcome.num_examples,
                    dict(outcome.metrics),
                    receiver.arrays(),
                    receiver.digest(),
                )
            )
            if not self._coordinator.resolve(outcome.task_id, result):
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the round closed before your update arrived",
                )
        except (grpc.RpcError, ConnectionError) as error:
            # A dropped upload answers nothing: the task stays open for a retry until its
            # deadline, and nothing of it was accepted.
            log.warning("%s's upload broke off (%s); its task stays open", client.province, error)
            context.abort(
                grpc.StatusCode.CANCELLED, "the upload broke off; its task stays open for a retry"
            )
        except (PayloadError, UpdateError) as error:
            # A stale update is well formed, only too late for the federation's state.
            stale = isinstance(error, StaleUpdate)
            self._refuse(
                context,
                outcome.task_id,
                grpc.StatusCode.FAILED_PRECONDITION if stale else grpc.StatusCode.INVALID_ARGUMENT,
                f"update refused: {error}",
            )
        except Exception as error:
            if context.code() is not None:  # an abort above, on its way out
                raise
            # A check that broke: this outcome is lost, never the federation.
            log.exception("checking %s's outcome failed: %s", client.province, bounded(error))
            self._refuse(
                context,
                outcome.task_id,
                grpc.StatusCode.INTERNAL,
                "update refused: the server could not check it (its log says why)",
            )
        finally:
            # Folded, refused or dropped: its room goes to the next upload in line.
            self._admission.give(reserved)
            self._coordinator.release(outcome.task_id)
        return pb.SubmitReply(accepted=True, message="accepted")

    def _admit(self, nbytes: int, phase: Phase, task_id: str, context: grpc.ServicerContext) -> int:
        """Reserve the upload's announced `nbytes` of the in-flight budget before reading any of
        its chunks (so flow control holds the sender back meanwhile), waiting its turn up to its
        task's deadline; the bytes reserved. The wait is the server's doing, not the client's
        silence: the idle timeout counts only time spent waiting on the peer."""
        if nbytes == 0:
            return 0

        gone: list[str] = []  # why the wait was abandoned, as `abandoned` found it

        def abandoned() -> bool:
            if not context.is_active():
                gone.append("stream")
            elif self._coordinator.task_phase(task_id) is None:
                gone.append("task")
            return bool(gone)

        if not self._admission.reserve(nbytes, phase.expires, abandoned):
            if gone == ["stream"]:
                raise ConnectionError("the stream ended while its upload waited for room")
            room = f"room in the server's in-flight budget ({self._admission.limit} bytes)"
            if gone == ["task"]:
                why = f"the task closed while its upload waited for {room}"
            else:
                deadline = f"{phase.deadline_seconds:g} s deadline"
                why = f"the {deadline} passed while the upload waited for {room}"
                self._coordinator.fail(task_id, why)
            log.warning("task %s: %s", task_id, why)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        return nbytes

    def _refuse(
        self, context: grpc.ServicerContext, task_id: str, code: grpc.StatusCode, why: str
    ) -> None:
        """Drop the client from this task's round, tell it why (escaped and cut to fit any
        trailer, as it may quote the client's own text), and log it."""
        why = bounded(why)
        self._coordinator.refuse(task_id, why)
        context.abort(code, why)

    def _certified_province(self, context: grpc.ServicerContext) -> str | None:
        """Under mutual TLS, the province named by the caller's verified certificate."""
        if not self._mutual_tls:
            return None
        identity = peer_common_name(context)
        name = self._coordinator.members.by_identity(identity)
        if name is None:
            shown = bounded(identity, 80)
            log.warning("refused a certificate for %r from %s", shown, context.peer())
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate names {shown!r}, which is not a member of this federation",
            )
        return name

    def _authenticate(self, context: grpc.ServicerContext) -> ClientSession:
        """The caller's session, counted against its share of open calls until this one ends."""
        token = dict(context.invocation_metadata()).get(SESSION_METADATA_KEY, "")
        client = self._coordinator.client_for(token) if token else None
        if client is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid session: call Join first")
        certified = self._certified_province(context)
        if certified is not None and certified != client.province:
            log.warning("%s (certified) used the session of %s", certified, client.province)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "this session belongs to another province"
            )
        if not self._coordinator.open_stream(client):
            log.warning("%s holds too many calls open; refused one more", client.province)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this session has {MAX_STREAMS_PER_SESSION} calls open already",
            )
        if not context.add_callback(lambda: self._closed(client)):
            self._closed(client)
        return client

    def _closed(self, client: ClientSession) -> None:
        """A call ended: its session has one call fewer, and an upload of it that waits for
        room learns at once that it is gone."""
        self._coordinator.close_stream(client)
        self._admission.wake()
