"""Random and mutated messages against the decoding and checking code, and against a live server.

Nothing hostile may crash the server, hang it, or reach the model: each message must end in a
status code, and afterwards an honest update is still accepted exactly as sent.
"""

import contextlib
import threading

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.launch import LocalFederation, free_port
from common.models import linear
from common.models.checks import UpdateError
from common.tensors import Payload, PayloadError, PayloadReceiver
from common.wire import MAX_MESSAGE_BYTES, SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from proto.fedstock.v1 import tensor_pb2
from server.__main__ import build_server
from server.channel import gather
from server.coordinator import Assignment, Coordinator
from server.strategy import ClientResult
from tests.fuzzing import Fuzzer, rss_bytes
from tests.test_federation import FAST, ROWS, SEED

N_FEATURES = 8
HONEST = ("hubei", "fujian")
SERVICE = "/fedstock.v1.Federation/"

specs = st.builds(
    tensor_pb2.TensorSpec,
    name=st.sampled_from(["xtx", "xty", "coef", "", "x" * 300]),
    dtype=st.integers(min_value=-3, max_value=12),
    shape=st.lists(st.integers(min_value=-2, max_value=1 << 40), max_size=4),
)
headers = st.builds(
    tensor_pb2.ParametersHeader,
    tensors=st.lists(specs, max_size=4),
    total_bytes=st.integers(min_value=0, max_value=1 << 63),
)
chunks = st.lists(st.binary(max_size=4096), max_size=4)


def honest_update() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return linear.normal_equations(rng.normal(size=(50, N_FEATURES)), rng.normal(size=50))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=headers, data=chunks)
def test_decoding_and_checking_refuse_garbage_with_their_own_errors(header, data):
    try:
        receiver = PayloadReceiver(header, max_bytes=1 << 20)
        for chunk in data:
            receiver.add(chunk)
        linear.check_normal_equations(receiver.arrays(), N_FEATURES)
    except (PayloadError, UpdateError):
        pass


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=2048))
def test_random_bytes_never_parse_into_something_unchecked(blob):
    try:
        chunk = pb.SubmitChunk.FromString(blob)
    except Exception:  # protobuf's DecodeError: refused before any of our code runs
        return
    if chunk.WhichOneof("part") == "outcome":
        with contextlib.suppress(PayloadError):
            PayloadReceiver(chunk.outcome.parameters, max_bytes=1 << 20).arrays()


class LiveServer:
    """An in-process server over real localhost gRPC, with one client session (hubei)."""

    def __init__(self) -> None:
        self.coordinator = Coordinator(poll_seconds=1)
        self.address = f"127.0.0.1:{free_port()}"
        self.server, _ = build_server(self.coordinator, self.address, 16, 1 << 20)
        self.server.start()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.FederationStub(self.channel)
        session = self.stub.Join(pb.JoinRequest(province="hubei", rows=1000), timeout=10).session
        self.metadata = ((SESSION_METADATA_KEY, session),)

    def open_task(self) -> tuple[pb.Task, threading.Thread, list]:
        """A TRAIN task for hubei, open until answered; its outcome lands in the list."""
        outcome: list = []

        def accept(result: ClientResult) -> ClientResult:
            linear.check_normal_equations(result.arrays, N_FEATURES)
            return result

        def phase() -> None:
            task = pb.Task(round=1, kind=pb.TASK_KIND_TRAIN)
            assignment = {"hubei": Assignment(task, None)}
            outcome.append(gather(self.coordinator, 1, pb.TASK_KIND_TRAIN, assignment, accept, 60))

        thread = threading.Thread(target=phase)
        thread.start()
        # Read the whole stream: leaving it early would count as a lost connection.
        first, *_ = self.stub.GetTask(pb.TaskRequest(), timeout=10, metadata=self.metadata)
        task = first.task
        return task, thread, outcome

    def raw(self, method: str, payload: bytes) -> grpc.StatusCode:
        """Arbitrary bytes as the request of `method`, past every client-side check."""
        calls = {
            "Join": self.channel.unary_unary,
            "GetTask": self.channel.unary_stream,
            "Submit": self.channel.stream_unary,
        }
        call = calls[method](SERVICE + method)
        try:
            reply = call(
                iter([payload]) if method == "Submit" else payload,
                timeout=10,
                metadata=self.metadata,
            )
            if method == "GetTask":
                list(reply)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    def submit(self, messages: list[pb.SubmitChunk]) -> grpc.StatusCode:
        try:
            self.stub.Submit(iter(messages), timeout=10, metadata=self.metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=0)


def submission(task_id: str, header, data: list[bytes], round_: int = 1, kind: int = 1) -> list:
    outcome = pb.Outcome(
        task_id=task_id, round=round_, kind=kind, num_examples=50, parameters=header
    )
    return [pb.SubmitChunk(outcome=outcome), *(pb.SubmitChunk(data=d) for d in data)]


VALID = Payload.encode(honest_update())
lies = st.tuples(
    st.one_of(headers, st.just(VALID.header)),
    st.one_of(chunks, st.just([VALID.blob[:-8]]), st.just([VALID.blob, b"x"])),
    st.sampled_from([1, 1, 0, 7]),
    st.sampled_from([pb.TASK_KIND_TRAIN, pb.TASK_KIND_TRAIN, pb.TASK_KIND_EVALUATE]),
)


@pytest.mark.integration
def test_a_live_server_survives_hostile_messages_and_still_takes_an_honest_update():
    live = LiveServer()
    fuzzed = {"raw": 0, "lies": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(["Join", "GetTask", "Submit"]), blob=st.binary(max_size=512))
    def raw_bytes(method, blob):
        fuzzed["raw"] += 1
        # Any answer will do, as long as it is the server's: not a hang, not a dead server.
        assert live.raw(method, blob) not in (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNAVAILABLE,
        )

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(lie=lies)
    def lying_submissions(lie):
        header, data, round_, kind = lie
        if (header, b"".join(data), round_, kind) == (VALID.header, VALID.blob, 1, 1):
            return  # the honest update, not a lie
        fuzzed["lies"] += 1
        task, phase, outcome = live.open_task()
        assert (
            live.submit(submission(task.task_id, header, data, round_, kind)) != grpc.StatusCode.OK
        )
        phase.join(timeout=30)
        results, failures = outcome[0]
        assert results == [] and [f.province for f in failures] == ["hubei"]

    try:
        raw_bytes()
        lying_submissions()
        task, phase, outcome = live.open_task()
        assert (
            live.submit(submission(task.task_id, VALID.header, list(VALID.chunks())))
            == grpc.StatusCode.OK
        )
        phase.join(timeout=30)
    finally:
        live.close()
    results, failures = outcome[0]
    assert failures == [] and len(results) == 1
    for name, array in honest_update().items():
        np.testing.assert_array_equal(results[0].arrays[name], array)
    print(
        f"\nlive fuzzing: {fuzzed['raw']} raw messages and {fuzzed['lies']} lying submissions; "
        "every lie refused, the server answered throughout, the honest update arrived intact"
    )


@pytest.mark.integration
def test_oversized_messages_and_updates_are_refused():
    live = LiveServer()
    try:
        # A message over the per-message limit: gRPC refuses it before our code sees it (the
        # handler may still see the stream end early and drop the client from the task).
        task, phase, huge_outcome = live.open_task()
        huge_chunk = submission(task.task_id, VALID.header, [b"x" * (MAX_MESSAGE_BYTES + 1)])
        assert live.submit(huge_chunk) == grpc.StatusCode.RESOURCE_EXHAUSTED
        live.coordinator.fail(task.task_id, "test: closing the task")
        phase.join(timeout=30)
        # An update that announces more bytes than the per-update limit.
        task, phase, big_outcome = live.open_task()
        big = Payload.encode({"xtx": np.zeros((400, 400)), "xty": np.zeros(400)})  # over 1 MiB
        try:
            live.stub.Submit(
                iter(submission(task.task_id, big.header, list(big.chunks()))),
                timeout=10,
                metadata=live.metadata,
            )
            raise AssertionError("an update over the limit was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "exceeds the limit" in error.details()
        phase.join(timeout=30)
    finally:
        live.close()
    assert huge_outcome[0][0] == []
    results, failures = big_outcome[0]
    assert results == [] and "exceeds the limit" in failures[0].reason


@pytest.mark.integration
def test_undecodable_requests_are_refused_as_bad_input_on_every_method():
    live = LiveServer()
    try:
        for method in ("Join", "GetTask", "Submit"):
            assert live.raw(method, b"\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT, method
        check = live.channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as health:
            check(b"\xff\xff\xff", timeout=10)
        assert health.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        live.close()


FUZZED = 100_000
# What 100,000 fuzzed messages may add to the server's memory: about 640 bytes each. grpcio's
# own failure path for an undecodable request keeps about 16 KB (1.6 GB here).
RSS_GROWTH_BOUND = 64 << 20


@pytest.mark.integration
def test_100k_fuzzed_messages_leave_memory_bounded_and_the_honest_model_bit_identical(tmp_path):
    def federation(name: str) -> LocalFederation:
        return LocalFederation(
            tmp_path / name,
            "lr-exact",
            1,
            ROWS,
            SEED,
            provinces=HONEST,
            server_args=FAST,
            insecure=True,
        )

    reference = federation("reference")
    reference.start()
    assert set(reference.wait(timeout=300).values()) == {0}
    attacked = federation("attacked")
    attacked.start_server()
    channel = grpc.insecure_channel(attacked.address)
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
        fuzzer = Fuzzer(channel, seed=0)
        fuzzer.send(5_000)  # the allocator and gRPC's pools settle first
        before = rss_bytes(attacked.server.pid)
        fuzzer.send(FUZZED)
        after = rss_bytes(attacked.server.pid)
    finally:
        channel.close()
    print(
        f"\nserver RSS before/after {fuzzer.sent - 5_000:,} fuzzed messages: "
        f"{before / (1 << 20):.1f} / {after / (1 << 20):.1f} MiB; answers {dict(fuzzer.codes)}"
    )
    assert fuzzer.sent >= 5_000 + FUZZED
    # Every answer is a refusal the server chose: no crash, no hang, no unhandled error.
    assert not {"UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED", "UNAVAILABLE"} & set(fuzzer.codes)
    assert after - before < RSS_GROWTH_BOUND
    for province in HONEST:
        attacked.start_client(province)
    assert set(attacked.wait(timeout=300).values()) == {0}
    expected = np.load(tmp_path / "reference" / "model.npz")
    model = np.load(tmp_path / "attacked" / "model.npz")
    assert sorted(model) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(model[name], expected[name])
