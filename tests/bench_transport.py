"""What gRPC's Python APIs cost an exchange before any of fedstock's code runs.

One exchange is what a histogram level or a round's phase is on the wire: the server puts one
message on each of nine open bidirectional streams, each client process answers with one, and
the server waits for all nine. No protobuf, no checks, no strategy: raw bytes through a
generic handler, so the figure is the floor that the transport alone sets. Run with each of
the synchronous API (a handler thread a stream, as fedstock's server and client use it) and
the asyncio API (`grpc.aio`, one event loop a process) on either side, in one run, so the
four pairings see the same machine.

    python -m tests.bench_transport [--exchanges 1000] [--clients 9]
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc import aio

SERVICE, METHOD = "bench.Transport", "Session"
WARM_UP = 100


def _same(data: bytes) -> bytes:
    return data


def _handlers(behaviour: object) -> list[grpc.GenericRpcHandler]:
    method = grpc.stream_stream_rpc_method_handler(behaviour, _same, _same)
    return [grpc.method_handlers_generic_handler(SERVICE, {METHOD: method})]


def _launch(port: int, api: str, clients: int) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "tests.bench_transport", "--client", api, "--port", str(port)]
    return [subprocess.Popen(command) for _ in range(clients)]


def _figures(seconds: float, cpu: float, exchanges: int) -> dict[str, float]:
    return {"ms": seconds / exchanges * 1e3, "server_cpu_ms": cpu / exchanges * 1e3}


def sync_server(client_api: str, clients: int, exchanges: int, payload: bytes) -> dict:
    """A handler thread a stream, each waiting on its own queue for the next message, the
    answers handed to the main thread through one more queue: the threads fedstock's
    synchronous server hands a task and its outcome through."""
    outboxes: list[queue.SimpleQueue] = []
    joined, answers = threading.Barrier(clients + 1), queue.SimpleQueue()

    def session(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        outbox: queue.SimpleQueue = queue.SimpleQueue()
        outboxes.append(outbox)
        joined.wait()
        while (message := outbox.get()) is not None:
            yield message
            answers.put(next(requests))

    server = grpc.server(ThreadPoolExecutor(clients + 4))
    server.add_generic_rpc_handlers(_handlers(session))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    processes = _launch(port, client_api, clients)
    joined.wait()
    figures = {}
    for count in (WARM_UP, exchanges):
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            for outbox in outboxes:
                outbox.put(payload)
            for _ in range(clients):
                answers.get()
        figures = _figures(time.perf_counter() - started, time.process_time() - cpu, count)
    for outbox in outboxes:
        outbox.put(None)
    for process in processes:
        process.wait()
    server.stop(None)
    return figures


async def aio_server(client_api: str, clients: int, exchanges: int, payload: bytes) -> dict:
    """Every stream a coroutine of one event loop; the main coroutine wakes once the last
    answer of an exchange is in."""
    outboxes: list[asyncio.Queue] = []
    everyone, answered = asyncio.Event(), asyncio.Event()
    waiting = [0]

    async def session(requests: AsyncIterator[bytes], context: aio.ServicerContext) -> None:
        outbox: asyncio.Queue = asyncio.Queue()
        outboxes.append(outbox)
        if len(outboxes) == clients:
            everyone.set()
        while (message := await outbox.get()) is not None:
            await context.write(message)
            await context.read()
            waiting[0] -= 1
            if not waiting[0]:
                answered.set()

    server = aio.server()
    server.add_generic_rpc_handlers(_handlers(session))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    processes = _launch(port, client_api, clients)
    await everyone.wait()
    figures = {}
    for count in (WARM_UP, exchanges):
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            waiting[0] = clients
            answered.clear()
            for outbox in outboxes:
                outbox.put_nowait(payload)
            await answered.wait()
        figures = _figures(time.perf_counter() - started, time.process_time() - cpu, count)
    for outbox in outboxes:
        outbox.put_nowait(None)
    await asyncio.get_running_loop().run_in_executor(None, lambda: [p.wait() for p in processes])
    await server.stop(None)
    return figures


def sync_client(port: int) -> None:
    """fedstock's client shape: requests fed from a queue by gRPC's own thread, replies read
    by the main thread."""
    outbox: queue.SimpleQueue = queue.SimpleQueue()

    def requests() -> Iterator[bytes]:
        while (message := outbox.get()) is not None:
            yield message

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(f"/{SERVICE}/{METHOD}", _same, _same)
        for message in call(requests()):
            outbox.put(message)
        outbox.put(None)


async def aio_client(port: int) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(f"/{SERVICE}/{METHOD}", _same, _same)()
        while (message := await call.read()) is not aio.EOF:
            await call.write(message)


SERVERS = {"sync": sync_server, "aio": lambda *work: asyncio.run(aio_server(*work))}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_transport", allow_abbrev=False)
    parser.add_argument("--exchanges", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=9)
    parser.add_argument("--bytes", type=int, default=2000, help="bytes a message")
    parser.add_argument("--client", choices=("sync", "aio"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        sync_client(args.port) if args.client == "sync" else asyncio.run(aio_client(args.port))
        return
    payload = b"x" * args.bytes
    print(f"{args.clients} client processes, {args.exchanges} exchanges of {args.bytes} bytes")
    print(f"{'server':>7} {'client':>7} {'ms an exchange':>15} {'server CPU ms':>14}")
    for server_api in ("sync", "aio"):
        for client_api in ("sync", "aio"):
            work = (client_api, args.clients, args.exchanges, payload)
            figures = SERVERS[server_api](*work)
            print(
                f"{server_api:>7} {client_api:>7} {figures['ms']:>15.3f} "
                f"{figures['server_cpu_ms']:>14.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
