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
from common.tensors import CHUNK_BYTES
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.__main__ import build_server
from server.channel import gather
from server.coordinator import Assignment, Coordinator
from server.strategy import ClientResult, FedAvg, weighted_average

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
