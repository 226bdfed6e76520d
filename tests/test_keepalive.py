"""A session stream that goes silent (its client process stopped, so not even a heartbeat comes)
fails the client's task once the idle timeout passes, with the reason recorded, rather than
holding the round until its deadline."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from common.launch import free_port
from proto.fedstock.v1 import federation_pb2 as pb
from server.__main__ import build_server
from server.channel import Assignment, Phase, gather
from server.coordinator import ClientSession, Coordinator
from server.limits import Activity

pytestmark = pytest.mark.integration

# The round would wait this long for the stopped client; the test's own timeout is far shorter.
DEADLINE = 3_600


def test_a_stopped_client_fails_its_task_at_the_idle_timeout_with_the_reason():
    coordinator = Coordinator(poll_seconds=1)
    port = free_port()
    server, _ = build_server(coordinator, f"127.0.0.1:{port}", 8, 1 << 20, idle_seconds=3)
    server.start()
    command = ["-m", "client", "--province", "hubei", "--server", f"127.0.0.1:{port}"]
    client = subprocess.Popen(
        [sys.executable, *command, "--insecure", "--rows", "2000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert coordinator.wait_for_clients(1, timeout=120) == ["hubei"]
        os.kill(client.pid, signal.SIGSTOP)
        task = pb.Task(round=1, kind=pb.TASK_KIND_EVALUATE)
        results, failures = gather(
            coordinator,
            1,
            pb.TASK_KIND_EVALUATE,
            {"hubei": Assignment(task, None)},
            lambda result: result,
            DEADLINE,
        )
    finally:
        os.kill(client.pid, signal.SIGKILL)
        os.kill(client.pid, signal.SIGCONT)
        client.wait(timeout=60)
        server.stop(grace=0)
    assert results == []
    assert [f.province for f in failures] == ["hubei"]
    assert "no heartbeat from hubei for 3 s" in failures[0].reason


class Context:
    """Stands for a call's context in Activity, which only cancels it."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_silence_runs_the_calls_callback_before_cancelling_it_and_only_when_idle():
    now = [0.0]
    activity = Activity(10, clock=lambda: now[0])
    quiet, busy, ended = Context(), Context(), Context()
    heard: list[str] = []
    for name, context in (("quiet", quiet), ("busy", busy), ("ended", ended)):
        activity.on_silence(context, lambda name=name: heard.append(name))
        activity.waiting(context)
    activity.working(busy)
    activity.done(ended)
    now[0] = 10.5
    assert activity.cancel_idle() == 1
    assert heard == ["quiet"] and quiet.cancelled.is_set()
    assert not busy.cancelled.is_set() and not ended.cancelled.is_set()
    activity.waiting(quiet)  # its callback ran once: a second silence only cancels
    now[0] = 100.0
    assert activity.cancel_idle() == 1 and heard == ["quiet"]


def test_a_silent_stream_fails_only_a_task_its_session_was_not_heard_from_on_since():
    coordinator = Coordinator(poll_seconds=1)
    client = coordinator.join("hubei", 300, "test")
    phase = coordinator.send(
        1, pb.TASK_KIND_TRAIN, {"hubei": Assignment(pb.Task(round=1), None)}, lambda r: r, 600
    )
    client.last_seen -= 5  # heard from 5 s ago, on another call
    assert not coordinator.fail_silent(client, 10, "silent")
    assert phase.waiting and phase.failures == []
    client.last_seen -= 10
    assert coordinator.fail_silent(client, 10, "silent")
    assert not phase.waiting and [f.reason for f in phase.failures] == ["silent"]
    newer = coordinator.join("hubei", 300, "test")  # a rejoin: the old stream's fails nothing
    coordinator.send(
        2, pb.TASK_KIND_TRAIN, {"hubei": Assignment(pb.Task(round=2), None)}, lambda r: r, 600
    )
    newer.last_seen -= 100
    assert not coordinator.fail_silent(client, 10, "silent")
    assert coordinator.fail_silent(newer, 10, "silent")


def test_a_task_whose_stream_ended_fails_unless_its_client_calls_again_in_time():
    coordinator = Coordinator(poll_seconds=1, return_seconds=0.5)
    client = coordinator.join("hubei", 300, "test")
    phase = coordinator.send(
        1, pb.TASK_KIND_TRAIN, {"hubei": Assignment(pb.Task(round=1), None)}, lambda r: r, DEADLINE
    )
    assert coordinator.open_stream(client)
    task_id = coordinator.next_assignment(client, lambda: True, streamed=True).task.task_id
    assert coordinator.open_stream(client)  # a retry's call, open before the first ends
    coordinator.close_stream(client)
    coordinator._unreturned(client, task_id)  # a call of the session is open: not gone
    assert phase.waiting and phase.failures == []
    coordinator.close_stream(client)  # the last call ends: the client has the grace to return
    while phase.waiting:  # the grace's timer fails it; a stall fails by the test's timeout
        coordinator.wait_any([phase], timeout=1)
    [failure] = phase.failures
    assert failure.province == "hubei" and "did not call again within 0.5 s" in failure.reason


def answered_then_gone(coordinator: Coordinator) -> tuple[ClientSession, Phase]:
    """hubei answers round 1's training over its stream, then the stream ends (its process
    killed between two phases), and round 1's evaluation is handed to it."""
    client = coordinator.join("hubei", 300, "test")
    first = coordinator.send(
        1, pb.TASK_KIND_TRAIN, {"hubei": Assignment(pb.Task(round=1), None)}, lambda r: r, DEADLINE
    )
    assert coordinator.open_stream(client)
    task_id = coordinator.next_assignment(client, lambda: True, streamed=True).task.task_id
    coordinator.resolve(task_id, "trained")
    coordinator.close_stream(client)  # no task open: nothing to fail
    assert first.results == ["trained"] and first.failures == []
    task = {"hubei": Assignment(pb.Task(round=1), None)}
    return client, coordinator.send(1, pb.TASK_KIND_EVALUATE, task, lambda r: r, DEADLINE)


def test_a_task_handed_out_after_the_stream_ended_fails_unless_its_client_calls_again():
    """The next phase's task for a province killed between two phases: no stream is left to
    end, so handing it out starts the grace."""
    coordinator = Coordinator(poll_seconds=1, return_seconds=0.5)
    _, second = answered_then_gone(coordinator)
    while second.waiting:  # the grace's timer fails it; a stall fails by the test's timeout
        coordinator.wait_any([second], timeout=1)
    [failure] = second.failures
    assert failure.province == "hubei" and "did not call again within 0.5 s" in failure.reason


def test_a_task_handed_to_a_client_that_calls_again_in_time_stays_open():
    coordinator = Coordinator(poll_seconds=1, return_seconds=0.5)
    client, phase = answered_then_gone(coordinator)
    assert coordinator.open_stream(client)  # it reconnects before the grace ends
    coordinator._unreturned(client, client.open_task)  # the grace's check, run by hand
    assert phase.waiting and phase.failures == []
