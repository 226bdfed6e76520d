"""Contributions over real gRPC: what a province receives in the analysis phase is the global
model and nothing else, read from the messages on its own channel.

The server runs in this process over its real gRPC service; nine real client daemons poll it,
each through a channel that records every message of every task stream it receives.
"""

import threading

import grpc
import numpy as np
import pytest

from client.daemon import ClientDaemon
from client.local import LocalWork
from common import analysis
from common.data import synthesize_province
from common.launch import free_port
from common.provinces import PROVINCES
from common.tensors import PayloadReceiver
from common.wire import from_config
from proto.fedstock.v1 import federation_pb2 as pb
from server.__main__ import begin, build_server, federate, results_file
from server.cli import parse_args
from server.coordinator import Coordinator

pytestmark = pytest.mark.integration

ROWS, LIMIT = 3_000, 1 << 26


class Recorded(grpc.UnaryStreamClientInterceptor):
    """Keeps every task stream as it arrived: the list of its messages, in order."""

    def __init__(self) -> None:
        self.streams: list[list[pb.TaskChunk]] = []

    def intercept_unary_stream(self, continuation, details, request):
        messages: list = []
        self.streams.append(messages)
        call = continuation(details, request)

        def recorded():
            for message in call:
                messages.append(message)
                yield message

        return recorded()


class RecordingDaemon(ClientDaemon):
    """The province's real daemon, its channel wrapped so that what it receives is kept. It
    takes its tasks by GetTask, where each task is one stream the interceptor sees whole; the
    Session stream carries the same tasks, built by the same server code."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, transport="unary", **kwargs)
        self.recorded = Recorded()

    def channel(self) -> grpc.Channel:
        return grpc.intercept_channel(super().channel(), self.recorded)


def received(daemon: RecordingDaemon, kind: int) -> list[tuple[dict, dict]]:
    """The config and decoded parameters of every task of `kind` the daemon was sent."""
    tasks = []
    for stream in daemon.recorded.streams:
        if not stream or stream[0].task.kind != kind:
            continue
        task = stream[0].task
        receiver = PayloadReceiver(task.parameters, LIMIT)
        for chunk in stream[1:]:
            receiver.add(chunk.data)
        tasks.append((from_config(task.config), receiver.arrays()))
    return tasks


@pytest.mark.parametrize("model", ["lr", "rf"])
def test_in_the_analysis_phase_a_province_receives_the_global_model_and_no_coalitions(
    tmp_path, model
):
    port = free_port()
    flags = ["--insecure", "--port", str(port), "--results", str(tmp_path / "results.json")]
    flags += ["--model", model, "--rounds", "1", "--contributions", "--poll-seconds", "1"]
    flags += ["--round-timeout", "600", "--join-timeout", "600"]
    if model == "rf":
        flags += ["--rf-n-estimators", "2", "--rf-global-trees", "18", "--rf-max-depth", "4"]
    config = parse_args(flags)
    coordinator = Coordinator(poll_seconds=1)
    server, _ = build_server(coordinator, f"localhost:{port}", 16, LIMIT)
    server.start()
    address = f"localhost:{port}"
    daemons = {
        p: RecordingDaemon(
            p, address, None, LocalWork(synthesize_province(p, ROWS, 1)), 300, 300, LIMIT
        )
        for p in PROVINCES
    }
    threads = [threading.Thread(target=d.run, daemon=True) for d in daemons.values()]
    for thread in threads:
        thread.start()
    start = begin(config)
    results = results_file(config)
    try:
        federate(config, coordinator, results, start)
    finally:
        coordinator.stop("the test is over", failed=False, grace_seconds=30)
        for thread in threads:
            thread.join(timeout=60)
        server.stop(grace=0)
    value = results.data["contributions"]
    assert set(value["shapley"]) == set(PROVINCES) and value["coalitions"] > 2 * len(PROVINCES)

    for province, daemon in daemons.items():
        (evaluated,) = received(daemon, pb.TASK_KIND_EVALUATE)
        (analysed,) = received(daemon, pb.TASK_KIND_ANALYSE)
        global_model, sent = evaluated[1], analysed[1]
        # Exactly the global model the province was scoring already: no candidate, so no
        # coalition's model, single provinces' and leave-one-out ones included.
        assert sorted(sent) == sorted(global_model), province
        for name, tensor in sent.items():
            np.testing.assert_array_equal(tensor, global_model[name])
        assert analysis.AnalysisAsk.from_config(analysed[0]).analysis_score_sums == 1
    disclosure = results.data["disclosure"]["analysis"]
    assert disclosure["provinces"].startswith("the global model only")
    assert "scores every coalition's model itself" in disclosure["server"]
