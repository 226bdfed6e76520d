"""A 300 MB+ forest of real trees goes up to the server and comes back down over real gRPC."""

import threading

import grpc
import numpy as np
import pandas as pd
import pytest
from sklearn.tree import DecisionTreeRegressor

from client.daemon import Backoff, ClientDaemon
from client.local import LocalWork, Outcome
from common.launch import free_port
from common.models import forest
from common.tensors import Payload
from common.wire import to_config
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.__main__ import build_server
from server.channel import gather
from server.coordinator import Assignment, Coordinator
from server.models import build_strategy

pytestmark = pytest.mark.integration

ROWS, FEATURES, DISTINCT, COPIES = 200_000, 2, 3, 9


def full_depth_trees():
    """Three unpruned trees on noise: about 400,000 nodes, 12.8 MB on the wire, each."""
    rng = np.random.default_rng(0)
    x, y = rng.random((ROWS, FEATURES)), rng.random(ROWS)
    return [DecisionTreeRegressor(random_state=i).fit(x, y) for i in range(DISTINCT)]


def test_a_300_mb_forest_crosses_the_wire_and_predicts_as_before():
    estimators = full_depth_trees()
    trees = [forest.tree_arrays(e) for e in estimators] * COPIES
    sent = forest.forest_to_arrays(trees)
    assert sum(a.nbytes for a in sent.values()) > 300 << 20
    strategy = build_strategy("rf", {"rf_global_trees": len(trees)})
    strategy.prepare(None, {"hubei": ROWS})

    coordinator = Coordinator(poll_seconds=5)
    port = free_port()
    server, _ = build_server(coordinator, f"127.0.0.1:{port}", workers=8, max_update_bytes=1 << 30)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.FederationStub(channel)
    daemon = ClientDaemon(
        # ROWS rows declared at Join: the outcomes below report up to ROWS examples.
        "hubei",
        f"127.0.0.1:{port}",
        None,
        LocalWork(pd.DataFrame(index=range(ROWS))),
        30,
        300,
        1 << 30,
        # The contract's first calls, GetTask and Submit (test_large_payload takes the stream).
        transport="unary",
    )
    received: dict = {}

    def client() -> None:
        daemon._join(stub, Backoff(patience=30))
        task, _ = daemon._next_task()
        daemon._submit(task, Outcome(ROWS, {}, sent))
        task, received["global"] = daemon._next_task()
        daemon._submit(task, Outcome(1, {"mse": 0.0}))

    def accept(result):
        strategy.check_update(result.arrays, FEATURES)
        return strategy.accept_fit(1, result)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert coordinator.wait_for_clients(1, timeout=30) == ["hubei"]
        (plan,) = strategy.configure_fit(1, None, ["hubei"])
        train = pb.Task(round=1, kind=pb.TASK_KIND_TRAIN, config=to_config(plan.config))
        results, failures = gather(
            coordinator, 1, pb.TASK_KIND_TRAIN, {"hubei": Assignment(train, None)}, accept, 300
        )
        assert failures == [] and results[0].arrays == {}  # folded in on arrival
        payload = Payload.encode(strategy.aggregate_fit(1, results, [], None))
        evaluate = pb.Task(round=1, kind=pb.TASK_KIND_EVALUATE, parameters=payload.header)
        _, failures = gather(
            coordinator,
            1,
            pb.TASK_KIND_EVALUATE,
            {"hubei": Assignment(evaluate, payload)},
            lambda r: r,
            300,
        )
        assert failures == []
    finally:
        thread.join(timeout=120)
        channel.close()
        server.stop(grace=1)
    assert payload.header.total_bytes > 300 << 20
    back = forest.forest_from_arrays(received["global"], FEATURES)
    assert len(back) == len(trees)
    x = np.random.default_rng(1).random((2000, FEATURES))
    for i, tree in enumerate(back):
        for field in forest.TREES.fields:
            np.testing.assert_array_equal(tree[field], trees[i][field])
    for estimator, tree in zip(estimators, back, strict=False):
        leaves = forest.leaves(tree, x.astype(np.float32))
        np.testing.assert_array_equal(tree["value"][leaves], estimator.predict(x))
    expected = np.mean([e.predict(x) for e in estimators], axis=0)
    np.testing.assert_allclose(forest.predict_forest(back, x), expected, rtol=1e-12)
