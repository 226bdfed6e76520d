"""Chunked uploads over real gRPC, folded into the round's sum as each counts."""

import threading

import grpc
import numpy as np
import pandas as pd
import pytest

from client.daemon import Backoff, ClientDaemon
from client.local import LocalWork, Outcome
from common.launch import free_port
from common.models.linear import check_weights
from common.tensors import CHUNK_BYTES, Payload
from common.wire import SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.__main__ import build_server
from server.channel import gather
from server.coordinator import Assignment, Coordinator
from server.strategy import ClientResult, FedAvg, weighted_average
from tests.test_session_stream import NEXT, OPEN, RawStream

pytestmark = pytest.mark.integration

PROVINCES = {"hubei": 300, "fujian": 1_000, "sichuan": 7}
SIZE = 3 * CHUNK_BYTES // 8 + 5  # four chunks an upload


def test_chunked_uploads_fold_to_the_weighted_mean_of_the_updates_sent():
    rng = np.random.default_rng(0)
    sent = {
        p: {"coef": rng.normal(size=SIZE), "intercept": np.array(rng.normal())} for p in PROVINCES
    }
    coordinator = Coordinator(poll_seconds=5)
    port = free_port()
    server, _ = build_server(coordinator, f"127.0.0.1:{port}", workers=8, max_update_bytes=1 << 26)
    server.start()
    channels, threads = [], []
    for province, rows in PROVINCES.items():
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        daemon = ClientDaemon(
            province,
            f"127.0.0.1:{port}",
            None,
            LocalWork(pd.DataFrame(index=range(rows))),
            30,
            120,
            1 << 26,
        )

        def client(daemon=daemon, channel=channel, rows=rows) -> None:
            daemon._join(pb_grpc.FederationStub(channel), Backoff(patience=30))
            task, _ = daemon._next_task()
            while task.kind == pb.TASK_KIND_WAIT:  # the others are still joining
                task, _ = daemon._next_task()
            daemon._submit(task, Outcome(rows, {}, sent[daemon.province]))

        threads.append(threading.Thread(target=client))
        threads[-1].start()
    strategy = FedAvg({}, check_weights)
    try:
        assert coordinator.wait_for_clients(len(PROVINCES), timeout=60) == sorted(PROVINCES)
        results, failures = gather(
            coordinator,
            1,
            pb.TASK_KIND_TRAIN,
            {p: Assignment(pb.Task(round=1, kind=pb.TASK_KIND_TRAIN), None) for p in PROVINCES},
            lambda result: result,
            120,
            lambda result: strategy.fold(1, result, None),
        )
    finally:
        for thread in threads:
            thread.join(timeout=60)
        for channel in channels:
            channel.close()
        server.stop(grace=1)
    assert failures == []
    assert all(r.arrays == {} for r in results)  # nothing of any update is held
    folded = strategy.aggregate_fit(1, results, [], None)
    held = weighted_average(
        [ClientResult(p, PROVINCES[p], {}, arrays) for p, arrays in sent.items()]
    )
    for name in held:
        np.testing.assert_allclose(folded[name], held[name], rtol=1e-12, atol=1e-15)


def test_an_upload_broken_off_mid_update_folds_nothing_and_its_retry_folds_once():
    """Half of a poisoned update (every value 1e9) arrives before the stream is cut; the retry
    sends the honest update. Had any chunk of the first been added, the mean would be ~1e9."""
    honest = {"coef": np.linspace(-1, 1, SIZE), "intercept": np.array(0.5)}
    poisoned = Payload.encode({"coef": np.full(SIZE, 1e9), "intercept": np.array(1e9)})
    payload = Payload.encode(honest)
    coordinator = Coordinator(poll_seconds=1)
    address = f"127.0.0.1:{free_port()}"
    server, _ = build_server(coordinator, address, workers=8, max_update_bytes=1 << 26)
    server.start()
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.FederationStub(channel)
    strategy = FedAvg({}, check_weights)
    streams: list[RawStream] = []
    try:
        session = stub.Join(pb.JoinRequest(province="hubei", rows=300), timeout=30).session
        metadata = ((SESSION_METADATA_KEY, session),)
        gathered: list = []
        phase = threading.Thread(
            target=lambda: gathered.append(
                gather(
                    coordinator,
                    1,
                    pb.TASK_KIND_TRAIN,
                    {"hubei": Assignment(pb.Task(round=1, kind=pb.TASK_KIND_TRAIN), None)},
                    lambda result: result,
                    600,
                    lambda result: strategy.fold(1, result, None),
                )
            )
        )
        phase.start()
        first = RawStream(stub, metadata)
        streams.append(first)
        first.send(OPEN, NEXT)
        first.read()  # opened
        task = first.read().task
        while task.kind == pb.TASK_KIND_WAIT:
            first.send(NEXT)
            task = first.read().task
        outcome = pb.Outcome(task_id=task.task_id, round=1, kind=task.kind, num_examples=300)
        outcome.parameters.CopyFrom(poisoned.header)
        chunks = list(poisoned.chunks())
        first.send(pb.SessionUp(outcome=outcome), *(pb.SessionUp(data=c) for c in chunks[:2]))
        reading = threading.Event()
        while not coordinator.answering(task.task_id):  # the server is reading the upload
            reading.wait(0.01)
        first.close()
        outcome.parameters.CopyFrom(payload.header)
        code = grpc.StatusCode.ABORTED
        while code == grpc.StatusCode.ABORTED:  # until the broken upload has let go
            retry = RawStream(stub, metadata)
            streams.append(retry)
            retry.send(OPEN, pb.SessionUp(outcome=outcome))
            retry.send(*(pb.SessionUp(data=c) for c in payload.chunks()))
            retry.read()  # opened
            code = retry.status()
        phase.join(timeout=120)
    finally:
        for stream in streams:
            stream.close()
        channel.close()
        server.stop(grace=0)
    assert code == grpc.StatusCode.OK
    results, failures = gathered[0]
    assert failures == [] and [r.province for r in results] == ["hubei"]
    folded = strategy.aggregate_fit(1, results, [], None)
    for name in honest:
        np.testing.assert_allclose(folded[name], honest[name], rtol=1e-15, atol=0)
