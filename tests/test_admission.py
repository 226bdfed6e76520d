"""Admission by reservation (server/admission.py): uploads beyond the in-flight budget wait
their turn, first come first served, instead of being refused; one above the whole budget is
refused at once (a server whose budget cannot hold its largest update is refused when built);
a wait ends at its task's deadline or when its stream goes, holding nothing.

The first tests drive Admission itself from threads; the rest run the real service over
localhost gRPC, with Session streams whose messages the test sends one by one, and watch the
server's own Admission to know who holds room and who waits."""

import threading
import time

import grpc
import numpy as np
import pytest

from common.launch import free_port
from common.tensors import CHUNK_BYTES, Payload
from common.wire import SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.__main__ import build_server
from server.admission import Admission
from server.channel import Assignment, Phase
from server.coordinator import Coordinator
from tests.test_session_stream import NEXT, OPEN, RawStream

FOREVER = time.monotonic() + 3600
# An update of three chunks; the budget in the service tests holds one of them, not two.
UPDATE = Payload.encode({"w": np.arange(3 * CHUNK_BYTES // 8, dtype=np.float64)})
SIZE = UPDATE.header.total_bytes
BUDGET = SIZE * 3 // 2


def until(condition, what: str) -> None:
    """Wait (up to a minute, however busy the machine) for `condition()` to hold."""
    pause = threading.Event()
    for _ in range(6000):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError(f"never happened: {what}")


def in_thread(target) -> tuple[threading.Thread, list]:
    """Run `target()` in a thread; what it returns lands in the list."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


# -- Admission on its own ----------------------------------------------------------------------


def test_waiters_are_admitted_in_arrival_order_whole_or_not_at_all():
    admission = Admission(100)
    assert admission.reserve(60, FOREVER)
    # 50 does not fit beside 60; the 10 that would fit waits behind it: first come, first served.
    big, big_out = in_thread(lambda: admission.reserve(50, FOREVER))
    until(lambda: admission.waiting == 1, "the 50 waits")
    small, small_out = in_thread(lambda: admission.reserve(10, FOREVER))
    until(lambda: admission.waiting == 2, "the 10 waits behind it")
    assert admission.used == 60  # nobody holds part of what it asked for
    admission.give(60)
    big.join(60)
    small.join(60)
    assert big_out == [True] and small_out == [True] and admission.used == 60
    admission.give(60)
    assert admission.used == 0


def test_a_wait_ends_at_its_deadline_or_when_abandoned_holding_nothing():
    admission = Admission(100)
    assert admission.reserve(100, FOREVER)
    assert admission.reserve(1, time.monotonic() - 1) is False  # its deadline has passed
    gone = threading.Event()
    waiter, out = in_thread(lambda: admission.reserve(50, FOREVER, gone.is_set))
    until(lambda: admission.waiting == 1, "the 50 waits")
    gone.set()
    admission.wake()
    waiter.join(60)
    assert out == [False] and admission.waiting == 0 and admission.used == 100


def test_more_than_the_whole_budget_is_refused_at_once_and_bad_counts_are_errors():
    admission = Admission(100)
    with pytest.raises(ValueError, match="more than the 100 bytes"):
        admission.reserve(101, FOREVER)
    assert admission.used == 0 and admission.waiting == 0
    with pytest.raises(ValueError, match="only 0 are reserved"):
        admission.give(1)
    with pytest.raises(ValueError, match="must be positive"):
        Admission(0)


# -- the service over gRPC ---------------------------------------------------------------------


class Federation:
    """A server over localhost gRPC with the in-flight budget `budget`, and a session of each
    of `provinces`; `admission` is the server's own."""

    def __init__(self, budget: int, provinces: tuple[str, ...], idle_seconds: float) -> None:
        self.admission = Admission(budget)
        self.coordinator = Coordinator(poll_seconds=1)
        address = f"127.0.0.1:{free_port()}"
        self.server, _ = build_server(
            self.coordinator,
            address,
            16,
            budget,  # the largest update is the budget, as `python -m server` has it by default
            admission=self.admission,
            idle_seconds=idle_seconds,
        )
        self.server.start()
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.metadata = {}
        for province in provinces:
            join = pb.JoinRequest(province=province, rows=1000)
            session = self.stub.Join(join, timeout=10).session
            self.metadata[province] = ((SESSION_METADATA_KEY, session),)
        self.streams: list[RawStream] = []

    def send(
        self, provinces: tuple[str, ...], deadline: float = 600, accept=lambda result: result
    ) -> Phase:
        """A TRAIN task for each of `provinces`, checked by `accept`, without a round loop:
        nothing closes them at their deadline but the uploads that wait past it."""
        assignments = {
            p: Assignment(pb.Task(round=1, kind=pb.TASK_KIND_TRAIN), None) for p in provinces
        }
        return self.coordinator.send(1, pb.TASK_KIND_TRAIN, assignments, accept, deadline)

    def task_stream(self, province: str) -> tuple[RawStream, pb.Task]:
        """A Session stream of `province`'s, and the task it was given."""
        stream = RawStream(self.stub, self.metadata[province])
        self.streams.append(stream)
        stream.send(OPEN, NEXT)
        assert stream.read().WhichOneof("part") == "opened"
        task = stream.read().task
        while task.kind == pb.TASK_KIND_WAIT:
            stream.send(NEXT)
            task = stream.read().task
        assert task.kind == pb.TASK_KIND_TRAIN
        return stream, task

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        self.coordinator.stop("the test is over", False, 0)
        self.channel.close()
        self.server.stop(grace=None)


def outcome(task: pb.Task) -> pb.SessionUp:
    up = pb.Outcome(task_id=task.task_id, round=task.round, kind=task.kind, num_examples=50)
    up.parameters.CopyFrom(UPDATE.header)
    return pb.SessionUp(outcome=up)


def data(first: int = 0, last: int | None = None) -> list[pb.SessionUp]:
    return [pb.SessionUp(data=c) for c in list(UPDATE.chunks())[first:last]]


@pytest.fixture
def federation():
    """Makes a Federation; closes each after the test."""
    made: list[Federation] = []

    def make(budget: int, provinces: tuple[str, ...], idle_seconds: float = 60) -> Federation:
        made.append(Federation(budget, provinces, idle_seconds))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_two_uploads_above_half_the_budget_are_taken_one_after_the_other_both_accepted(
    federation,
):
    fed = federation(BUDGET, ("hubei", "beijing"))
    phase = fed.send(("hubei", "beijing"))
    first, first_task = fed.task_stream("hubei")
    second, second_task = fed.task_stream("beijing")
    first.send(outcome(first_task), *data(0, 1))  # admitted, one chunk of three sent
    until(lambda: fed.admission.used == SIZE, "the first upload is admitted")
    second.send(outcome(second_task), *data())  # all of it: the server reads none yet
    until(lambda: fed.admission.waiting == 1, "the second upload waits for room")
    assert fed.admission.used == SIZE and len(phase.results) == 0
    first.send(*data(1))
    assert first.read().reply.accepted
    assert second.read().reply.accepted  # admitted once the first was folded: not resent
    assert sorted(r.province for r in phase.results) == ["beijing", "hubei"]
    assert phase.failures == [] and fed.admission.used == 0


def test_an_upload_above_the_whole_budget_is_refused_at_once_as_too_large(federation):
    fed = federation(SIZE - 1, ("hubei",))
    phase = fed.send(("hubei",))
    stream, task = fed.task_stream("hubei")
    stream.send(outcome(task))  # no data: the header alone is refused
    with pytest.raises(grpc.RpcError) as refused:
        stream.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"exceeds the limit of {SIZE - 1} bytes" in refused.value.details()
    assert [f.province for f in phase.failures] == ["hubei"]
    assert fed.admission.used == 0 and fed.admission.waiting == 0


def test_a_server_whose_budget_cannot_hold_its_largest_update_is_refused_when_built():
    coordinator = Coordinator(poll_seconds=1)
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match="cannot admit an update of 101 bytes"):
        build_server(coordinator, address, 4, 101, admission=Admission(100))


def test_an_upload_still_waiting_at_its_deadline_fails_with_why_and_takes_nothing(federation):
    fed = federation(BUDGET, ("hubei", "beijing"))
    fed.send(("hubei",))
    late = fed.send(("beijing",), deadline=0.5)
    holder, holder_task = fed.task_stream("hubei")
    waiter, waiter_task = fed.task_stream("beijing")
    holder.send(outcome(holder_task), *data(0, 1))
    until(lambda: fed.admission.used == SIZE, "the first upload is admitted")
    waiter.send(outcome(waiter_task), *data())
    with pytest.raises(grpc.RpcError) as failed:
        waiter.read()
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "deadline passed while the upload waited for room" in failed.value.details()
    assert [(f.province, "waited for room" in f.reason) for f in late.failures] == [
        ("beijing", True)
    ]
    # It held nothing, so it gave nothing back: the first upload's room is still the first's.
    assert fed.admission.used == SIZE and fed.admission.waiting == 0
    holder.send(*data(1))
    assert holder.read().reply.accepted and fed.admission.used == 0


def test_streams_dropped_waiting_or_mid_upload_free_their_place_and_the_next_proceeds(
    federation,
):
    fed = federation(BUDGET, ("hubei", "beijing", "shanghai"))
    phase = fed.send(("hubei", "beijing", "shanghai"))
    holder, holder_task = fed.task_stream("hubei")
    dropped, dropped_task = fed.task_stream("beijing")
    last, last_task = fed.task_stream("shanghai")
    holder.send(outcome(holder_task), *data(0, 1))
    until(lambda: fed.admission.used == SIZE, "the first upload is admitted")
    dropped.send(outcome(dropped_task), *data())
    until(lambda: fed.admission.waiting == 1, "the second upload waits")
    last.send(outcome(last_task), *data())
    until(lambda: fed.admission.waiting == 2, "the third waits behind it")
    dropped.close()  # gone while waiting: out of the line, holding nothing
    until(lambda: fed.admission.waiting == 1, "the dropped upload leaves the line")
    assert fed.admission.used == SIZE
    holder.close()  # gone mid-upload: its room goes to the next in line
    assert last.read().reply.accepted
    assert [r.province for r in phase.results] == ["shanghai"]
    assert fed.admission.used == 0 and fed.admission.waiting == 0
    # Both broken uploads answered nothing: their tasks stay open for a retry.
    assert fed.coordinator.task_phase(holder_task.task_id) is phase
    assert fed.coordinator.task_phase(dropped_task.task_id) is phase


def test_an_upload_whose_task_closes_mid_way_is_dropped_at_its_next_chunk_freeing_its_room(
    federation,
):
    """A client trickling chunks (even empty ones, which never overrun the announced size)
    after its task failed or passed its deadline may not keep the room it reserved."""
    fed = federation(BUDGET, ("hubei",))
    fed.send(("hubei",))
    stream, task = fed.task_stream("hubei")
    stream.send(outcome(task), *data(0, 1))
    until(lambda: fed.admission.used == SIZE, "the upload is admitted")
    fed.coordinator.fail(task.task_id, "its deadline passed")  # what the round loop does
    stream.send(pb.SessionUp(data=b""))
    with pytest.raises(grpc.RpcError) as dropped:
        stream.read()
    assert dropped.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "the task closed while its upload was arriving" in dropped.value.details()
    until(lambda: fed.admission.used == 0, "the dropped upload gives its room back")


def test_waiting_for_room_is_not_silence_the_idle_timeout_leaves_the_waiting_stream_alone(
    federation,
):
    """The first upload's check is held (the server working, not waiting on its client) for
    several idle timeouts while the second waits behind it; neither stream is cancelled."""
    checking, go_on = threading.Event(), threading.Event()

    def slow_check(result):
        checking.set()
        go_on.wait(120)
        return result

    fed = federation(BUDGET, ("hubei", "beijing"), idle_seconds=1)
    phase = fed.send(("hubei", "beijing"), accept=slow_check)
    first, first_task = fed.task_stream("hubei")
    second, second_task = fed.task_stream("beijing")
    first.send(outcome(first_task), *data())
    assert checking.wait(60)
    second.send(outcome(second_task), *data())
    until(lambda: fed.admission.waiting == 1, "the second upload waits for room")
    threading.Event().wait(3)  # three idle timeouts: the watchdog looks once a second
    go_on.set()
    assert first.read().reply.accepted and second.read().reply.accepted
    assert sorted(r.province for r in phase.results) == ["beijing", "hubei"]
