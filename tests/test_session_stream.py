"""The Session stream (contract versions 2 and 3) over real localhost gRPC: its order, its
identity checks, the version errors between old and new peers, resuming after a dropped
stream, and heartbeats that keep a working client's stream inside the server's idle timeout."""

import gc
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np
import pandas as pd
import pytest

from client.daemon import Backoff, ClientDaemon
from client.links import StreamLink
from client.local import LocalWork
from client.tasks import ClientError
from common.launch import free_port
from common.tensors import Payload
from common.wire import PROTOCOL_VERSION, SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.__main__ import build_server
from server.channel import Assignment, gather
from server.coordinator import Coordinator
from server.servicer import FederationServicer, add_to_server
from tests.test_fuzz import SERVICE, VALID, LiveServer, honest_update

pytestmark = pytest.mark.integration

# A version 2 client's stream, as fedstock's clients before version 3 open it: the raw tests
# below speak it, so it stays served.
OPEN = pb.SessionUp(open=pb.SessionOpen(protocol_version=2))
NEXT = pb.SessionUp(next=pb.TaskRequest())


class RawStream:
    """A Session call whose messages the test sends one by one, past every client check."""

    def __init__(
        self, stub: pb_grpc.FederationStub, metadata: tuple, session: Callable | None = None
    ) -> None:
        """`session`: the Session method to call, the stub's unless given (say, one that
        reads the server's messages as raw bytes)."""
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        outbox = self._outbox

        def requests():
            while (message := outbox.get()) is not None:
                yield message

        self.call = (session or stub.Session)(requests(), timeout=60, metadata=metadata)

    def send(self, *messages: pb.SessionUp) -> None:
        for message in messages:
            self._outbox.put(message)

    def read(self) -> pb.SessionDown:
        return next(self.call)

    def status(self) -> grpc.StatusCode:
        """How the stream ends: OK after a reply, or the code it was ended with."""
        try:
            self.read()
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    def finish(self) -> None:
        """Half-close: no more messages, the call left open for the server's answer."""
        self._outbox.put(None)

    def close(self) -> None:
        self.finish()
        self.call.cancel()


def outcome_messages(task: pb.Task, data: list[bytes]) -> list[pb.SessionUp]:
    outcome = pb.Outcome(task_id=task.task_id, round=task.round, kind=task.kind, num_examples=50)
    outcome.parameters.CopyFrom(VALID.header)
    return [pb.SessionUp(outcome=outcome), *(pb.SessionUp(data=d) for d in data)]


def open_phase(live: LiveServer) -> tuple[threading.Thread, list]:
    """A TRAIN task for hubei, open for 60 s; the phase's results and failures land in the list."""
    outcome: list = []

    def phase() -> None:
        assignment = {"hubei": Assignment(pb.Task(round=1, kind=pb.TASK_KIND_TRAIN), None)}
        outcome.append(gather(live.coordinator, 1, pb.TASK_KIND_TRAIN, assignment, _keep, 60))

    thread = threading.Thread(target=phase)
    thread.start()
    return thread, outcome


def _keep(result):
    return result


@pytest.mark.parametrize("end", ["cancelled", "half-closed"])
def test_a_stream_dropped_mid_upload_leaves_the_task_open_and_its_retry_is_accepted_once(end):
    """However the broken stream ends (the server may hear the half-close before the cancel),
    the half upload answers nothing and the task waits for the retry."""
    live = LiveServer()
    streams: list[RawStream] = []
    try:
        phase, outcome = open_phase(live)
        first = RawStream(live.stub, live.metadata)
        streams.append(first)
        first.send(OPEN, NEXT)
        assert first.read().opened.protocol_version == 2
        task = first.read().task
        while task.kind == pb.TASK_KIND_WAIT:  # the stream asked before the phase was sent
            first.send(NEXT)
            task = first.read().task
        assert task.kind == pb.TASK_KIND_TRAIN
        # Half the update; once the server is reading it, the connection is gone.
        first.send(*outcome_messages(task, [VALID.blob[: len(VALID.blob) // 2]]))
        reading = threading.Event()
        for _ in range(6000):  # the server reads the outcome within a minute, however busy
            if live.coordinator.answering(task.task_id):
                break
            reading.wait(0.01)
        assert live.coordinator.answering(task.task_id)
        if end == "cancelled":
            first.close()
        else:
            first.finish()
            assert first.status() == grpc.StatusCode.CANCELLED
        honest = outcome_messages(task, list(VALID.chunks()))
        codes = [grpc.StatusCode.ABORTED]
        while codes[-1] == grpc.StatusCode.ABORTED:  # until the broken stream has let go
            retry = RawStream(live.stub, live.metadata)
            streams.append(retry)
            retry.send(OPEN, *honest)
            assert retry.read().WhichOneof("part") == "opened"
            codes.append(retry.status())
        again = RawStream(live.stub, live.metadata)
        streams.append(again)
        again.send(OPEN, *honest)
        again.read()
        second = again.status()
        phase.join(timeout=60)
    finally:
        for stream in streams:
            stream.close()
        live.close()
    assert codes[-1] == grpc.StatusCode.OK, codes
    assert second == grpc.StatusCode.FAILED_PRECONDITION  # once only
    results, failures = outcome[0]
    assert failures == [] and len(results) == 1
    for name, array in honest_update().items():
        np.testing.assert_array_equal(results[0].arrays[name], array)


@pytest.mark.parametrize("version", [2, 3])
def test_a_task_and_its_outcome_take_two_messages_on_version_3_and_six_on_version_2(version):
    """Version 3 carries small parameters and updates inside the task and outcome, and answers
    the outcome with the next task (here WAIT, after the poll interval: no other task is
    open); version 2, which older clients speak, still gets its chunks, reply and `next`."""
    live = LiveServer()
    stream = RawStream(live.stub, live.metadata)
    try:
        model = Payload.encode({"coef": np.arange(4.0)})
        results: list = []
        task = pb.Task(round=1, kind=pb.TASK_KIND_TRAIN, parameters=model.header)
        thread = threading.Thread(
            target=lambda: results.append(
                gather(
                    live.coordinator,
                    1,
                    pb.TASK_KIND_TRAIN,
                    {"hubei": Assignment(task, model)},
                    _keep,
                    60,
                )
            )
        )
        thread.start()
        stream.send(pb.SessionUp(open=pb.SessionOpen(protocol_version=version)), NEXT)
        assert stream.read().opened.protocol_version == version
        down = [stream.read()]
        while down[0].task.kind == pb.TASK_KIND_WAIT:  # asked before the phase was sent
            stream.send(NEXT)
            down = [stream.read()]
        if version == 2:
            down.append(stream.read())
            assert down[1].data == model.blob and not down[0].task.inline_data
        else:
            assert down[0].task.inline_data == model.blob
        given = down[0].task
        outcome = pb.Outcome(task_id=given.task_id, round=1, kind=given.kind, num_examples=50)
        outcome.parameters.CopyFrom(VALID.header)
        if version == 3:
            outcome.inline_data = VALID.blob
            stream.send(pb.SessionUp(outcome=outcome))
            answer = stream.read()
            assert answer.task.kind == pb.TASK_KIND_WAIT  # the next task, no reply
        else:
            stream.send(*outcome_messages(given, list(VALID.chunks())), NEXT)
            assert stream.read().reply.accepted
            assert stream.read().task.kind == pb.TASK_KIND_WAIT
        thread.join(timeout=60)
    finally:
        stream.close()
        live.close()
    accepted, failures = results[0]
    assert failures == [] and len(accepted) == 1
    for name, array in honest_update().items():
        np.testing.assert_array_equal(accepted[0].arrays[name], array)


def test_every_stream_gets_the_parameters_as_the_same_published_bytes_let_go_after_the_phase():
    """Three provinces (a version 3 and a version 2 session stream, a version 1 GetTask) take one
    model of three chunks: each chunk arrives as the bytes protobuf writes for its message, the
    two streams' the very same, and once sent the server keeps none of them; the model's payload
    is freed with its phase."""
    live = LiveServer()
    calls: list = []
    try:
        sessions = {"hubei": live.metadata}
        for province in ("fujian", "sichuan"):
            joined = live.stub.Join(pb.JoinRequest(province=province, rows=1000), timeout=10)
            sessions[province] = ((SESSION_METADATA_KEY, joined.session),)
        model = Payload.encode({"coef": np.arange(300_000.0)})  # 2.4 MB: three chunks
        released = weakref.ref(model)
        ended: list = []

        def phase(model: Payload) -> None:
            assignments = {
                p: Assignment(
                    pb.Task(round=1, kind=pb.TASK_KIND_TRAIN, parameters=model.header), model
                )
                for p in sessions
            }
            ended.append(gather(live.coordinator, 1, pb.TASK_KIND_TRAIN, assignments, _keep, 60))

        thread = threading.Thread(target=phase, args=(model,))
        thread.start()
        raw_session = live.channel.stream_stream(
            SERVICE + "Session",
            request_serializer=pb.SessionUp.SerializeToString,
            response_deserializer=None,
        )
        down: dict[str, list[bytes]] = {}
        for province, version in (("hubei", 3), ("fujian", 2)):
            stream = RawStream(live.stub, sessions[province], raw_session)
            calls.append(stream)
            stream.send(pb.SessionUp(open=pb.SessionOpen(protocol_version=version)), NEXT)
            assert pb.SessionDown.FromString(stream.read()).opened.protocol_version == version
            task = pb.SessionDown.FromString(stream.read()).task
            while task.kind == pb.TASK_KIND_WAIT:  # asked before the phase was sent
                stream.send(NEXT)
                task = pb.SessionDown.FromString(stream.read()).task
            assert not task.inline_data
            down[province] = [stream.read() for _ in range(3)]
            live.coordinator.fail(task.task_id, "the test has what it came for")
        raw_get = live.channel.unary_stream(
            SERVICE + "GetTask",
            request_serializer=pb.TaskRequest.SerializeToString,
            response_deserializer=None,
        )
        task = pb.Task(kind=pb.TASK_KIND_WAIT)
        while task.kind == pb.TASK_KIND_WAIT:
            got = list(raw_get(pb.TaskRequest(), timeout=30, metadata=sessions["sichuan"]))
            task = pb.TaskChunk.FromString(got[0]).task
        live.coordinator.fail(task.task_id, "the test has what it came for")
        thread.join(timeout=60)
        assert down["hubei"] == down["fujian"]
        assert down["hubei"] == [pb.SessionDown(data=c).SerializeToString() for c in model.chunks()]
        assert got[1:] == [pb.TaskChunk(data=c).SerializeToString() for c in model.chunks()]
        assert model.frames_held == 0
        del model
        gc.collect()
        assert released() is None
    finally:
        for stream in calls:
            stream.close()
        live.close()
    [(results, failures)] = ended
    assert results == [] and len(failures) == 3


@pytest.mark.parametrize("version", [2, 3])
def test_the_clients_link_speaks_the_version_join_agreed(version):
    """fedstock's own link at version 3, and at 2 as it speaks to a version 2 server: the task's
    parameters arrive whole, the outcome is accepted, and its receipts' hook runs once."""
    live = LiveServer()
    link = StreamLink(live.stub, live.metadata, 1 << 20, version)
    try:
        model = Payload.encode({"coef": np.arange(4.0)})
        results: list = []
        task = pb.Task(round=1, kind=pb.TASK_KIND_TRAIN, parameters=model.header)
        assignment = {"hubei": Assignment(task, model)}
        thread = threading.Thread(
            target=lambda: results.append(
                gather(live.coordinator, 1, pb.TASK_KIND_TRAIN, assignment, _keep, 60)
            )
        )
        thread.start()
        given, parameters = link.next_task()
        while given.kind == pb.TASK_KIND_WAIT:
            given, parameters = link.next_task()
        np.testing.assert_array_equal(parameters["coef"], np.arange(4.0))
        header = pb.Outcome(task_id=given.task_id, round=1, kind=given.kind, num_examples=50)
        header.parameters.CopyFrom(VALID.header)
        hooked: list = []
        link.submit(header, VALID, lambda: hooked.append(True))
        thread.join(timeout=60)
        assert hooked == [True]
        assert link.next_task()[0].kind == pb.TASK_KIND_WAIT
    finally:
        link.close()
        live.close()
    accepted, failures = results[0]
    assert failures == [] and len(accepted) == 1


def test_the_stream_opens_in_order_with_a_session_and_a_version_it_speaks():
    live = LiveServer()
    streams = []
    try:
        joined = live.stub.Join(pb.JoinRequest(province="fujian"), timeout=10)
        assert joined.protocol_version == PROTOCOL_VERSION == 3

        def ending(metadata, *messages) -> grpc.RpcError:
            stream = RawStream(live.stub, metadata)
            streams.append(stream)
            stream.send(*messages)
            with pytest.raises(grpc.RpcError) as ended:
                while True:
                    stream.read()
            return ended.value

        anonymous = ending((), OPEN)
        assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
        headless = ending(live.metadata, NEXT)
        assert headless.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must start with open" in headless.details()
        old = ending(live.metadata, pb.SessionUp(open=pb.SessionOpen(protocol_version=1)))
        assert old.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "use GetTask and Submit" in old.details()
        newer = ending(live.metadata, pb.SessionUp(open=pb.SessionOpen(protocol_version=4)))
        assert newer.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "speaks contract versions 2 to 3; the client says it speaks 4" in newer.details()
        assert "open the stream with version 3, as Join said" in newer.details()

        # A stream belongs to its session: once a newer Join replaces it, the next message
        # ends the stream.
        stream = RawStream(live.stub, live.metadata)
        streams.append(stream)
        stream.send(OPEN)
        assert stream.read().WhichOneof("part") == "opened"
        live.stub.Join(pb.JoinRequest(province="hubei", rows=1000), timeout=10)
        stream.send(pb.SessionUp(heartbeat=pb.Heartbeat()))
        with pytest.raises(grpc.RpcError) as replaced:
            stream.read()
        assert replaced.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "replaced by a newer Join" in replaced.value.details()
    finally:
        for stream in streams:
            stream.close()
        live.close()


class VersionOneServicer(FederationServicer):
    """A server of the first contract: its Join says no version, and it has no Session."""

    Session = pb_grpc.FederationServicer.Session

    def Join(self, request, context):
        reply = super().Join(request, context)
        reply.ClearField("protocol_version")
        return reply


def test_a_stream_client_meeting_a_version_one_server_is_told_what_to_do():
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    add_to_server(
        VersionOneServicer(Coordinator(poll_seconds=1), 1 << 20, mutual_tls=False), server
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        outcomes = {}
        for transport in ("stream", "unary"):
            daemon = ClientDaemon(
                "hubei" if transport == "stream" else "fujian",
                f"127.0.0.1:{port}",
                None,
                LocalWork(pd.DataFrame(index=range(5))),
                30,
                30,
                1 << 20,
                transport=transport,
            )
            with daemon.channel() as channel:
                try:
                    daemon._join(pb_grpc.FederationStub(channel), Backoff(patience=30))
                    outcomes[transport] = "joined"
                except ClientError as error:
                    outcomes[transport] = str(error)
    finally:
        server.stop(grace=0)
    assert "speaks contract version 1" in outcomes["stream"]
    assert "--transport unary" in outcomes["stream"]
    assert outcomes["unary"] == "joined"


def test_heartbeats_keep_a_working_clients_stream_past_the_idle_timeout():
    # Idle timeout 6 s, so heartbeats every 2 s; the client works on its task for 13 s, more
    # than twice the timeout, and its stream still takes the outcome.
    coordinator = Coordinator(poll_seconds=1)
    address = f"127.0.0.1:{free_port()}"
    server, _ = build_server(coordinator, address, 8, 1 << 20, idle_seconds=6)
    server.start()
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.FederationStub(channel)
    try:
        session = stub.Join(pb.JoinRequest(province="hubei", rows=1000), timeout=10).session
        link = StreamLink(stub, ((SESSION_METADATA_KEY, session),), 1 << 20, PROTOCOL_VERSION)
        results: list = []
        sent = threading.Event()

        def phase() -> None:
            assignment = {"hubei": Assignment(pb.Task(round=1, kind=pb.TASK_KIND_TRAIN), None)}
            sent.set()
            results.append(gather(coordinator, 1, pb.TASK_KIND_TRAIN, assignment, _keep, 120))

        thread = threading.Thread(target=phase)
        thread.start()
        sent.wait(timeout=60)
        task, _ = link.next_task()
        while task.kind == pb.TASK_KIND_WAIT:
            task, _ = link.next_task()
        threading.Event().wait(13)  # the client's local work
        header = pb.Outcome(task_id=task.task_id, round=1, kind=task.kind, num_examples=50)
        payload = Payload.encode(honest_update())
        header.parameters.CopyFrom(payload.header)
        link.submit(header, payload, lambda: None)
        thread.join(timeout=60)
        link.close()
    finally:
        channel.close()
        server.stop(grace=0)
    accepted, failures = results[0]
    assert failures == [] and len(accepted) == 1
