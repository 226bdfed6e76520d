"""A 300 MB model crosses real gRPC on localhost both ways, far past the 4 MB message default."""

import threading

import grpc
import numpy as np
import pandas as pd
import pytest

from client.daemon import Backoff, ClientDaemon
from client.local import LocalWork, Outcome
from common.launch import free_port
from common.tensors import Payload
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.__main__ import build_server
from server.channel import gather
from server.coordinator import Assignment, Coordinator
from server.strategy import ClientResult

pytestmark = pytest.mark.integration

MODEL_BYTES = 320 << 20


def test_a_300_mb_model_travels_down_and_back_intact():
    rng = np.random.default_rng(0)
    model = {
        "big": rng.random(MODEL_BYTES // 8 - 1000),
        "small": np.arange(1000, dtype=np.float64),
        "ints": np.arange(12, dtype=np.int32).reshape(3, 4),
    }
    coordinator = Coordinator(poll_seconds=5)
    port = free_port()
    server, _ = build_server(coordinator, f"127.0.0.1:{port}", workers=8, max_update_bytes=1 << 30)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    daemon = ClientDaemon(
        # One row, declared at Join: the outcome below reports one example.
        "hubei",
        f"127.0.0.1:{port}",
        None,
        LocalWork(pd.DataFrame(index=range(1))),
        30,
        120,
        1 << 30,
    )
    stub = pb_grpc.FederationStub(channel)
    received: dict = {}

    def client() -> None:
        daemon._join(stub, Backoff(patience=30))
        task, parameters = daemon._next_task()
        received["task"], received["arrays"] = task, parameters
        daemon._submit(task, Outcome(1, {}, parameters))

    thread = threading.Thread(target=client)
    thread.start()
    assert coordinator.wait_for_clients(1, timeout=30) == ["hubei"]
    payload = Payload.encode(model)
    task = pb.Task(round=1, kind=pb.TASK_KIND_TRAIN, parameters=payload.header)
    results, failures = gather(
        coordinator,
        1,
        pb.TASK_KIND_TRAIN,
        {"hubei": Assignment(task, payload)},
        _keep,
        deadline_seconds=120,
    )
    thread.join(timeout=60)
    channel.close()
    server.stop(grace=1)
    assert failures == []
    assert payload.header.total_bytes >= 300 << 20
    for arrays in (received["arrays"], results[0].arrays):
        assert list(arrays) == list(model)
        for name, array in model.items():
            np.testing.assert_array_equal(arrays[name], array)
            assert arrays[name].dtype == array.dtype


def _keep(result: ClientResult) -> ClientResult:
    return result
