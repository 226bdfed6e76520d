"""Hostile participants against a real server and real honest client processes (lr-exact).

Every lie is refused with INVALID_ARGUMENT and a reason, and the honest provinces' model comes
out as if the liar had not spoken.
"""

import contextlib
import math
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.bounded import REASON_CHARS
from common.launch import LocalFederation, free_port
from common.wire import SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from proto.fedstock.v1 import tensor_pb2
from server.__main__ import build_health_server, build_server
from server.coordinator import MAX_STREAMS_PER_SESSION, Coordinator
from server.limits import PEER_SIDE_CALLS, SIDE_CALLS
from tests.hostile import Liar, Lie, run_beside, statistics_shapes
from tests.test_federation import FAST, ROWS, SEED, centralised_fit
from tests.test_fuzz import VALID, LiveServer, honest_update, submission

pytestmark = pytest.mark.integration
SERVING = health_pb2.HealthCheckResponse.SERVING

HONEST = ("hubei", "fujian")
COLUMNS = 9  # next-day: eight features and the target


def two_honest(tmp_path, rounds: int, *server_args: str) -> LocalFederation:
    """An lr-exact federation of the two honest provinces over plaintext, for a stranger or a
    liar to join."""
    return LocalFederation(
        tmp_path,
        "lr-exact",
        rounds,
        ROWS,
        SEED,
        provinces=HONEST,
        server_args=[*FAST, *server_args],
        insecure=True,
    )


def absurd_numbers() -> list[Lie]:
    """The issue's finite-but-absurd outcomes, one per task the liar is given, in order."""
    shapes = statistics_shapes(COLUMNS)
    update = {"xtx": np.eye(COLUMNS), "xty": np.zeros(COLUMNS)}
    return [
        Lie(1000, {}, {**shapes, "count": np.array(1e300)}),  # statistics
        Lie(1000, {"train_mse": 1.7e308}, update),  # round 1: train
        Lie(1000, {"mse": 1.7e308}),  # round 1: evaluate
        Lie(2**63, {"train_mse": 0.0}, update),  # round 2: train
        Lie(2**63, {"mse": 0.0}),  # round 2: evaluate
    ]


def test_absurd_numbers_are_refused_and_the_honest_model_is_untouched(tmp_path):
    federation = two_honest(tmp_path, 2, "--min-available", "3")
    federation.start_server()
    lies = iter(absurd_numbers())
    liar = Liar(federation.address, "shanghai", 1000, lambda task: next(lies, None))
    run_beside(liar, federation, HONEST)
    assert liar.error is None, liar.error
    kinds = [pb.TASK_KIND_STATISTICS, *[pb.TASK_KIND_TRAIN, pb.TASK_KIND_EVALUATE] * 2]
    assert [(k, c) for k, c, _ in liar.refusals] == [
        (k, grpc.StatusCode.INVALID_ARGUMENT) for k in kinds
    ], liar.refusals
    reasons = [why for *_, why in liar.refusals]
    assert "count" in reasons[0] and "train_mse" in reasons[1] and "'mse'" in reasons[2]
    assert all("declared at Join" in why for why in reasons[3:])
    results = federation.results()
    assert set(results["statistics"]["train_samples"]) == set(HONEST)
    for record in results["rounds"]:
        assert record["clients"] == sorted(HONEST)
        assert {f["province"] for f in record["failures"]} == {"shanghai"}
        assert set(record["per_client"]) == set(HONEST) and math.isfinite(record["mse"])
    model = np.load(tmp_path / "model.npz")
    central = centralised_fit(provinces=HONEST)
    np.testing.assert_allclose(model["coef"], central.coef_, rtol=1e-6)
    np.testing.assert_allclose(model["intercept"], central.intercept_, rtol=1e-6)
    per_client = results["final"]["per_client"]
    total = sum(s["n_test"] for s in per_client.values())
    honest_mse = sum(s["mse"] * s["n_test"] for s in per_client.values()) / total
    assert results["final"]["mse"] == pytest.approx(honest_mse, rel=1e-12)


def test_a_billion_claimed_test_rows_cannot_set_the_round_mse_with_robust_metrics(tmp_path):
    federation = two_honest(tmp_path, 1, "--min-available", "3", "--robust-metrics")
    federation.start_server()
    claimed = 10**9  # within the rows it declares at Join, so every check passes
    lies = iter(
        [
            Lie(1000, {}, {**statistics_shapes(COLUMNS), "count": np.array(2.0)}),  # refused
            Lie(1000, {"train_mse": -1.0}, {"xtx": np.eye(COLUMNS), "xty": np.zeros(COLUMNS)}),
            Lie(claimed, {"mse": 1e-12}),  # accepted: absurd, but plausible
        ]
    )
    liar = Liar(federation.address, "shanghai", claimed, lambda task: next(lies, None))
    run_beside(liar, federation, HONEST)
    assert [kind for kind, *_ in liar.refusals] == [pb.TASK_KIND_STATISTICS, pb.TASK_KIND_TRAIN]
    final = federation.results()["final"]
    per_client = final["per_client"]
    assert per_client["shanghai"]["n_test"] == claimed
    honest = [per_client[p] for p in HONEST]
    honest_mse = sum(s["mse"] * s["n_test"] for s in honest) / sum(s["n_test"] for s in honest)
    # Weighted by every claimed row, the liar's MSE would be the federation's.
    pooled = sum(s["mse"] * s["n_test"] for s in per_client.values()) / (
        sum(s["n_test"] for s in per_client.values())
    )
    assert pooled < 1e-3 * honest_mse
    # Capped at the median province's test rows, it weighs as one honest province.
    cap = max(s["n_test"] for s in honest)
    weighed = sum(s["mse"] * s["n_test"] for s in honest) + per_client["shanghai"]["mse"] * cap
    assert final["mse"] == pytest.approx(weighed / (cap + sum(s["n_test"] for s in honest)))
    assert final["mse"] > 0.5 * honest_mse


def test_a_dropped_upload_leaves_the_task_open_for_one_retry():
    live = LiveServer()
    try:
        task, phase, outcome = live.open_task()
        messages = submission(task.task_id, VALID.header, [VALID.blob[: len(VALID.blob) // 2]])
        hold = threading.Event()

        def broken():
            yield from messages
            hold.wait(timeout=60)  # the client stalls, then its connection is dropped

        call = live.stub.Submit.future(broken(), timeout=60, metadata=live.metadata)
        call.cancel()
        hold.set()
        honest = submission(task.task_id, VALID.header, list(VALID.chunks()))
        codes = [grpc.StatusCode.ABORTED]
        while codes[-1] == grpc.StatusCode.ABORTED:  # until the broken stream has let go
            codes.append(live.submit(honest))
        again = live.submit(honest)
        phase.join(timeout=60)
    finally:
        live.close()
    assert codes[-1] == grpc.StatusCode.OK, codes
    assert again == grpc.StatusCode.FAILED_PRECONDITION  # once only
    results, failures = outcome[0]
    assert failures == [] and len(results) == 1
    for name, array in honest_update().items():
        np.testing.assert_array_equal(results[0].arrays[name], array)


class Server:
    """An in-process server over real localhost gRPC, with limits a test can reach quickly."""

    def __init__(self, idle_seconds: float = 600, reflection_on: bool = False) -> None:
        self.coordinator = Coordinator(poll_seconds=600)
        self.address = f"127.0.0.1:{free_port()}"
        self.server, _ = build_server(
            self.coordinator,
            self.address,
            16,
            1 << 20,
            reflection_on=reflection_on,
            idle_seconds=idle_seconds,
        )
        # The same server over IPv6 loopback: a second peer address on this machine.
        self.other_address = f"[::1]:{free_port()}"
        self.server.add_insecure_port(self.other_address)
        self.server.start()
        self.channel = grpc.insecure_channel(self.address)
        self.other_channel = grpc.insecure_channel(self.other_address)
        self.stub = pb_grpc.FederationStub(self.channel)

    def join(self, province: str) -> tuple[tuple[str, str]]:
        request = pb.JoinRequest(province=province, rows=1000)
        return ((SESSION_METADATA_KEY, self.stub.Join(request, timeout=60).session),)

    def healthy(self) -> bool:
        check = health_pb2_grpc.HealthStub(self.channel).Check
        return check(health_pb2.HealthCheckRequest(), timeout=60).status == SERVING

    def close(self) -> None:
        self.channel.close()
        self.other_channel.close()
        self.server.stop(grace=0)


def refusals(calls: list, count: int) -> list[grpc.StatusCode]:
    """The codes of the first `count` calls to be refused, each call's first answer read on
    its own thread; the calls the server holds open (or answers) are left as they are."""
    refused, done = [], threading.Semaphore(0)

    def read(call):
        try:
            next(call)
        except grpc.RpcError as error:
            refused.append(error.code())
            done.release()

    for call in calls:
        threading.Thread(target=read, args=(call,), daemon=True).start()
    for _ in range(count):
        done.acquire()
    return refused


def test_idle_and_surplus_streams_cannot_starve_the_federation():
    live = Server(reflection_on=True)
    try:
        # Forty health watches from each of two addresses: each address holds its share of the
        # cap, the rest are refused at once.
        watches = []
        for channel in (live.channel, live.other_channel):
            watch = health_pb2_grpc.HealthStub(channel).Watch
            calls = [watch(health_pb2.HealthCheckRequest(), timeout=600) for _ in range(40)]
            refused = refusals(calls, 40 - PEER_SIDE_CALLS)
            assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * (40 - PEER_SIDE_CALLS)
            watches += calls
        assert 2 * PEER_SIDE_CALLS == SIDE_CALLS
        # Forty reflection streams that never send a request: refused beyond the same cap.
        silent = threading.Event()

        def nothing():
            silent.wait()
            yield from ()

        info = reflection_pb2_grpc.ServerReflectionStub(live.channel).ServerReflectionInfo
        streams = [info(nothing(), timeout=600) for _ in range(40)]
        # The watches hold every thread of the cap: all forty are refused.
        assert refusals(streams, 40) == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 40
        # One session opening twenty long polls holds its share of threads, no more.
        hubei = live.join("hubei")
        polls = [
            live.stub.GetTask(pb.TaskRequest(), timeout=600, metadata=hubei) for _ in range(20)
        ]
        refused = refusals(polls, 20 - MAX_STREAMS_PER_SESSION)
        assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * (20 - MAX_STREAMS_PER_SESSION)
        # Meanwhile the federation still answers everyone else.
        assert live.join("fujian") and live.healthy()
        # Its first poll makes hubei a member (the polls last 600 s: it stays polling).
        while live.coordinator.connected() != ["hubei"]:
            threading.Event().wait(0.05)
        # A stranger cannot take the seat of a province that is polling, nor invent one.
        for province, code in (
            ("hubei", grpc.StatusCode.ALREADY_EXISTS),
            ("atlantis", grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.RpcError) as refused_join:
                live.join(province)
            assert refused_join.value.code() == code
        # Joined but never polled, fujian is not a member: it counts toward no quorum.
        assert "fujian" not in live.coordinator.connected()
        silent.set()
        for call in [*watches, *polls]:
            call.cancel()
    finally:
        live.close()


def test_a_federation_completes_beside_idle_strangers_and_a_stranger_holding_a_seat(tmp_path):
    federation = two_honest(tmp_path, 2, "--reflection")
    federation.start_server()
    channel = grpc.insecure_channel(federation.address)
    silent, stop = threading.Event(), threading.Event()

    def nothing():
        silent.wait()
        yield from ()

    try:
        grpc.channel_ready_future(channel).result(timeout=120)
        watch = health_pb2_grpc.HealthStub(channel).Watch
        info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        idle = [watch(health_pb2.HealthCheckRequest(), timeout=600) for _ in range(40)]
        idle += [info(nothing(), timeout=600) for _ in range(40)]
        refused = refusals(idle, 80 - PEER_SIDE_CALLS)
        assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * (80 - PEER_SIDE_CALLS)
        # A stranger takes a free province's seat and keeps its session fresh, never polling.
        stub = pb_grpc.FederationStub(channel)
        seat = stub.Join(pb.JoinRequest(province="shanghai", rows=1000), timeout=60).session
        bogus = pb.SubmitChunk(outcome=pb.Outcome(task_id="none", round=1, kind=1))

        def keep_fresh():
            while not stop.wait(0.5):
                with contextlib.suppress(grpc.RpcError):
                    stub.Submit(iter([bogus]), timeout=60, metadata=((SESSION_METADATA_KEY, seat),))

        stranger = threading.Thread(target=keep_fresh, daemon=True)
        stranger.start()
        for province in HONEST:
            federation.start_client(province)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=60).status == SERVING
        codes = federation.wait(timeout=300)
    finally:
        stop.set()
        silent.set()
        channel.close()
    assert codes == {"server": 0, **{p: 0 for p in HONEST}}, codes
    results = federation.results()
    assert set(results["statistics"]["train_samples"]) == set(HONEST)
    assert all(record["clients"] == sorted(HONEST) for record in results["rounds"])


def test_the_health_port_is_a_server_of_its_own_that_serves_no_federation_call():
    servicer = health.HealthServicer()
    address = f"127.0.0.1:{free_port()}"
    probes = build_health_server(address, servicer, reflection_on=False, idle_seconds=600)
    probes.start()
    channel = grpc.insecure_channel(address)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch
        watches = [watch(health_pb2.HealthCheckRequest(), timeout=600) for _ in range(40)]
        refused = refusals(watches, 40 - PEER_SIDE_CALLS)
        assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * (40 - PEER_SIDE_CALLS)
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(), timeout=60).status == SERVING
        with pytest.raises(grpc.RpcError) as federation:
            pb_grpc.FederationStub(channel).Join(pb.JoinRequest(province="hubei"), timeout=60)
        assert federation.value.code() == grpc.StatusCode.UNIMPLEMENTED
        for call in watches:
            call.cancel()
    finally:
        channel.close()
        probes.stop(grace=0)


def test_a_stream_that_sends_nothing_is_cancelled_and_reflection_is_off_by_default():
    live = Server(idle_seconds=1)
    try:
        metadata = live.join("hubei")
        stalled = threading.Event()

        def nothing():
            stalled.wait()
            yield from ()

        idle = live.stub.Submit.future(nothing(), timeout=600, metadata=metadata)
        assert idle.exception(timeout=300).code() == grpc.StatusCode.CANCELLED
        stalled.set()
        info = reflection_pb2_grpc.ServerReflectionStub(live.channel).ServerReflectionInfo
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as off:
            next(info(iter([request]), timeout=60))
        assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert live.healthy()
    finally:
        live.close()


def test_a_megabyte_tensor_name_is_refused_with_a_reason_that_fits_and_is_not_copied():
    live = LiveServer()
    try:
        task, phase, outcome = live.open_task()
        name = "x" * (1 << 20)
        header = tensor_pb2.ParametersHeader(
            tensors=[
                tensor_pb2.TensorSpec(name=name, dtype=1, shape=[9, 9]),
                *VALID.header.tensors,
            ],
            total_bytes=VALID.header.total_bytes + 648,
        )
        with pytest.raises(grpc.RpcError) as refused:
            live.stub.Submit(
                iter(submission(task.task_id, header, [bytes(648) + VALID.blob])),
                timeout=60,
                metadata=live.metadata,
            )
        phase.join(timeout=60)
    finally:
        live.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED
    assert (
        len(refused.value.details()) <= REASON_CHARS
        and "more characters" in refused.value.details()
    )
    results, failures = outcome[0]
    assert results == [] and len(failures[0].reason) <= REASON_CHARS
