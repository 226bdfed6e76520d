"""`make bench-hostile`: what hostile callers cost a real server process, and what the checks cost.

Prints first, for bare grpcio servers of health and reflection (threaded with 32 threads, and
asyncio) and for fedstock's own: their RSS with --streams silent reflection streams, and whether
a health Check still answers. Then, for a server started with `python -m server --insecure`:
- its RSS before and after --messages random and mutated messages across every method;
- its RSS with 1,000 idle connections, and with 100 idle streams (health watches and silent
  Submits: how many the server held, how many it refused);
- a fresh server's honest run after it was fuzzed;
- an honest federation's mean round seconds (two provinces, lr-exact) alone and during each
  attack;
- the seconds the outcome checks (and --robust-metrics' weighting) take per round for nine
  provinces.
Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from common import preprocess
from common.data import synthesize_province
from common.launch import free_port
from common.provinces import PROVINCES
from common.scores import Evaluation
from common.wire import SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.__main__ import build_server
from server.checks import check_outcome, check_statistics
from server.coordinator import Coordinator
from server.localrun import LocalFederation
from server.robust_metrics import capped
from server.strategy import ClientResult
from tests.fuzzing import SEEDS, Fuzzer, rss_bytes

HONEST = ("hubei", "fujian")
MIB = 1 << 20


def federation(out: Path, rounds: int, rows: int) -> LocalFederation:
    return LocalFederation(
        out,
        "lr-exact",
        rounds,
        rows,
        3,
        provinces=HONEST,
        server_args=["--poll-seconds", "2", "--join-timeout", "3600", "--round-timeout", "120"],
        insecure=True,
    )


def ready(address: str) -> grpc.Channel:
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=300)
    return channel


def honest_rounds(run: LocalFederation) -> float:
    """Start the honest clients, wait for the run to end: its mean round seconds."""
    for province in HONEST:
        run.start_client(province)
    run.wait(timeout=1800)
    return statistics.mean(r["seconds"] for r in run.results()["rounds"])


def idle_connections(address: str, count: int) -> list[grpc.Channel]:
    """`count` connected channels, each its own TCP connection, that never call anything."""
    channels = [
        grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count)
    ]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=300)
    return channels


def idle_streams(channel: grpc.Channel, count: int, sessions: bool) -> tuple[list, dict[str, int]]:
    """`count` streams that send nothing: health watches, and (with `sessions`) half of them
    silent Submits from sessions of three provinces that take no part; how each ended up (held,
    or refused by code). Those sessions count toward the quorum: not for a server whose honest
    run is still to come."""
    silent = threading.Event()

    def nothing():
        silent.wait()
        yield from ()

    stub = pb_grpc.FederationStub(channel)
    joined = [
        stub.Join(pb.JoinRequest(province=p, rows=10), timeout=60).session
        for p in (("beijing", "shanghai", "zhejiang") if sessions else ())
    ]
    watches = count // 2 if sessions else count
    watch = health_pb2_grpc.HealthStub(channel).Watch
    calls = [watch(health_pb2.HealthCheckRequest(), timeout=3600) for _ in range(watches)]
    calls += [
        stub.Submit.future(
            nothing(), timeout=3600, metadata=((SESSION_METADATA_KEY, joined[i % 3]),)
        )
        for i in range(count - watches)
    ]
    time.sleep(5)  # let the server answer what it refuses; a figure, not a test
    tally: dict[str, int] = {}
    for call in calls:
        key = call.code().name if call.done() else "held"
        tally[key] = tally.get(key, 0) + 1
    calls.append(silent)
    return calls, tally


def release(calls: list) -> None:
    for call in calls:
        if isinstance(call, threading.Event):
            call.set()
        else:
            call.cancel()


def during(attack: Callable[[str], Callable[[], None]], out: Path, args) -> tuple[float, str]:
    """An honest run while `attack` runs against its server; (mean round s, attack report)."""
    run = federation(out, args.rounds, args.rows)
    run.start_server()
    ready(run.address).close()
    stop = attack(run.address)
    seconds = honest_rounds(run)
    return seconds, stop()


def serve_threaded(port: int, ready: Any) -> None:
    """A bare threaded grpcio server of health and reflection, 32 handler threads (as
    fedstock's default), without fedstock's limits."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    reflection.enable_server_reflection((health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    server.wait_for_termination()


def serve_asyncio(port: int, ready: Any) -> None:
    """The same with grpc.aio: one event loop, no thread per call."""

    async def serve() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        reflection.enable_server_reflection((health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(serve())


def serve_fedstock(port: int, ready: Any) -> None:
    """fedstock's own threaded server (32 threads and its limits), with reflection on."""
    server, _ = build_server(
        Coordinator(poll_seconds=2), f"127.0.0.1:{port}", 32, 1 << 20, reflection_on=True
    )
    server.start()
    ready.set()
    server.wait_for_termination()


def silent_reflection(kind: str, serve: Callable[[int, Any], None], count: int) -> None:
    """Print a bare server's RSS with `count` reflection streams that send nothing, and whether
    a health Check still answers within 10 s."""
    spawn = multiprocessing.get_context("spawn")
    ready, port = spawn.Event(), free_port()
    process = spawn.Process(target=serve, args=(port, ready), daemon=True)
    process.start()
    ready.wait(timeout=300)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    silent = threading.Event()

    def nothing():
        silent.wait()
        yield from ()

    try:
        grpc.channel_ready_future(channel).result(timeout=300)
        before = rss_bytes(process.pid)
        info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        calls = [info(nothing(), timeout=3600) for _ in range(count)]
        time.sleep(5)  # let the server take them in; a figure, not a test
        began = time.perf_counter()
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            check = f"a health Check answered in {time.perf_counter() - began:.3f} s"
        except grpc.RpcError as error:
            check = f"a health Check failed: {error.code().name}"
        after = rss_bytes(process.pid)
        print(
            f"  {kind}: {count:,} silent reflection streams; RSS {before / MIB:.1f} -> "
            f"{after / MIB:.1f} MiB; {check}"
        )
        silent.set()
        for call in calls:
            call.cancel()
    finally:
        channel.close()
        process.kill()
        process.join()


def check_cost() -> float:
    """Seconds the checks of nine provinces' outcomes take in one round (train and evaluate)."""
    data = preprocess.split(synthesize_province("hubei", 20_000, 3), "next-day")
    sums, n = preprocess.statistics(data.x_train, data.y_train), len(data.y_train)
    columns = [*preprocess.NEXT_DAY_FEATURES, preprocess.TARGET]
    metrics = {"mse": 0.04, "train_mse": 0.03, "seconds": 1.0}
    per_stats = min(timeit.repeat(lambda: check_statistics(sums, n, columns), number=200)) / 200
    per_outcome = min(timeit.repeat(lambda: check_outcome(n, metrics, 10 * n), number=2000)) / 2000
    scores = [ClientResult(p, n // 4, {"mse": 0.04}) for p in PROVINCES]
    evaluation = Evaluation.weighted(scores)
    per_round = min(timeit.repeat(lambda: capped(evaluation), number=2000)) / 2000
    print(f"  --robust-metrics' weighting: {per_round * 1e6:.1f} µs per round")
    print(f"  check_statistics: {per_stats * 1e6:.0f} µs per province (once per run)")
    print(f"  check_outcome: {per_outcome * 1e6:.1f} µs per outcome")
    return 9 * 2 * per_outcome


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench_hostile", description=__doc__, allow_abbrev=False
    )
    parser.add_argument("--messages", type=int, default=100_000, help="fuzzed messages")
    parser.add_argument("--rounds", type=int, default=5, help="honest rounds per run")
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the synthetic market")
    parser.add_argument(
        "--streams", type=int, default=1000, help="silent streams on the bare servers"
    )
    args = parser.parse_args(argv)
    print("bare grpcio servers of health and reflection, threaded (32 threads) and asyncio:")
    silent_reflection("threaded", serve_threaded, 40)
    silent_reflection("threaded", serve_threaded, args.streams)
    silent_reflection("asyncio", serve_asyncio, args.streams)
    silent_reflection("fedstock (threaded, its limits)", serve_fedstock, args.streams)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        print("cost of the outcome checks:")
        print(f"  per round, nine provinces: {check_cost() * 1e6:.0f} µs")

        run = federation(out / "rss", args.rounds, args.rows)
        run.start_server()
        channel = ready(run.address)
        pid = run.server.pid
        print(f"server RSS at start: {rss_bytes(pid) / MIB:.1f} MiB")
        connections = idle_connections(run.address, 1000)
        print(f"server RSS with 1,000 idle connections: {rss_bytes(pid) / MIB:.1f} MiB")
        for c in connections:
            c.close()
        calls, tally = idle_streams(channel, 100, sessions=True)
        print(f"server RSS with 100 idle streams: {rss_bytes(pid) / MIB:.1f} MiB ({tally})")
        release(calls)
        channel.close()
        run.kill()

        run = federation(out / "fuzzed", args.rounds, args.rows)
        run.start_server()
        channel = ready(run.address)
        pid = run.server.pid
        fuzzer = Fuzzer(channel, seed=0)
        fuzzer.send(5_000)  # warm up: the allocator and gRPC's pools settle first
        before = rss_bytes(pid)
        began = time.perf_counter()
        fuzzer.send(args.messages)
        spent = time.perf_counter() - began
        after = rss_bytes(pid)
        print(
            f"server RSS before/after {args.messages:,} fuzzed messages: {before / MIB:.1f} / "
            f"{after / MIB:.1f} MiB ({(after - before) / args.messages:.0f} bytes per message; "
            f"{args.messages / spent:.0f} messages/s; codes {fuzzer.codes})"
        )
        fuzzer.send(args.messages // 4)
        print(f"  and after {args.messages // 4:,} more: {rss_bytes(pid) / MIB:.1f} MiB")
        channel.close()
        print(f"honest run afterwards: mean round {honest_rounds(run):.3f} s")
        model = out / "fuzzed" / "model.npz"
        print(f"  its model's tensors: {json.dumps(sorted(np.load(model)))}")

        baseline = federation(out / "alone", args.rounds, args.rows)
        baseline.start_server()
        print(f"honest mean round alone: {honest_rounds(baseline):.3f} s")

        def fuzzing(address: str):
            channel = grpc.insecure_channel(address)
            # No Join: on an --insecure server a fuzzed Join that names an honest province can
            # take its seat while it trains (docs/hardening.md), which this run is not about.
            methods = tuple(m for m in SEEDS if not m.endswith("/Join"))
            fuzzer, stop = Fuzzer(channel, seed=1, methods=methods), threading.Event()
            thread = threading.Thread(target=lambda: fuzzer.send(10**9, stop), daemon=True)
            thread.start()

            def end() -> str:
                stop.set()
                thread.join()
                channel.close()
                return f"{fuzzer.sent:,} messages"

            return end

        def idling(address: str):
            channel = grpc.insecure_channel(address)
            connections = idle_connections(address, 1000)
            calls, tally = idle_streams(channel, 100, sessions=False)

            def end() -> str:
                release(calls)
                for c in [*connections, channel]:
                    c.close()
                return f"1,000 idle connections and 100 idle streams {tally}"

            return end

        for name, attack in (("fuzzing", fuzzing), ("idle", idling)):
            seconds, report = during(attack, out / name, args)
            print(f"honest mean round during {name}: {seconds:.3f} s ({report})")


if __name__ == "__main__":
    main()
