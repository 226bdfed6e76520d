"""`make bench-fold`: what a round of 10 MB updates costs the server's memory, held or folded.

A server process (the coordinator, its gRPC service and FedAvg, as `python -m server` runs
them, without the evaluation phase and the recording between rounds) sends a model of
`--floats` float64 weights to `--clients` client processes every round; each answers with an
update of that size over the Session stream, in 1 MiB chunks. Run four times: keeping every
update until the round ends (the held path) or folding each into the running sum as it
counts; each both with glibc's allocator as it comes and with large freed buffers given back
to the system, as `python -m server` sets it (common/allocator.py); each under every in-flight
budget asked for (`--max-inflight-mb`, uploads beyond it wait their turn). Prints each run's
server peak RSS (VmHWM, read from /proc/<pid>/status by this bench once the server has
done its rounds, before it exits) and median round (from one round's end, the model
aggregated, to the next one's: rounds 2..R). With `--pause` each client waits that long
between taking the model and sending its update, and the server also prints, round by round,
its highest RSS in that wait: what the download side holds. `make bench-flower` runs the
folded, given-back server beside Flower on the same job (tests/bench_flower.py). Measures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common.provinces import PROVINCES
from common.wire import DEFAULT_RECEIVE_WINDOW_KB, server_options
from server.admission import DEFAULT_INFLIGHT_MIB

ROWS = 1_000
LIMIT = 64 << 20  # the largest update the server takes


def vmhwm_mib(status: str) -> float:
    """The peak resident set (VmHWM) a /proc/<pid>/status text gives, in MiB."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            fields = line.split()
            if len(fields) != 3 or fields[2] != "kB" or not fields[1].isdigit():
                raise ValueError(f"VmHWM line not in kB: {line!r}")
            return int(fields[1]) / 1024
    raise ValueError("no VmHWM line: not the status of a live process")


def resident_mib() -> float:
    """This process's resident set now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError("no VmRSS line in /proc/self/status")


class Sampler:
    """This process's VmRSS every 2 ms on a thread of its own: what the server holds once the
    model has gone down and before any update comes up (`--pause`), which VmHWM cannot tell."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.002):
            self.samples.append((time.perf_counter(), resident_mib()))

    def highest(self, start: float, end: float) -> float:
        """The highest VmRSS sampled from `start` to `end` (perf_counter seconds)."""
        return max((mib for at, mib in self.samples if start <= at < end), default=math.nan)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def high_water_mib(pid: int | str = "self") -> float:
    """A process's peak resident set so far (this one's by default), from /proc."""
    return vmhwm_mib(Path(f"/proc/{pid}/status").read_text())


def median_interval(ends: list[float]) -> float:
    """The median time from one round's end to the next one's: rounds 2..R, as the first has
    no end before it (start-up is left out)."""
    if len(ends) < 2:
        raise ValueError(f"{len(ends)} round ends: a median interval needs at least two")
    return statistics.median(np.diff(ends))


def report_then_wait(figures: dict) -> None:
    """Print a server's figures, then stay alive until the bench has read its peak RSS from
    /proc/<pid>/status (it closes our stdin): a process that has exited has no VmHWM."""
    print(json.dumps(figures), flush=True)
    sys.stdin.read()


def read_report(server: subprocess.Popen, name: str, limit: float = 3600.0) -> dict:
    """The figures line of a server started with stdin and stdout piped (`report_then_wait`),
    and its peak RSS (`peak_mib`) read from /proc while it waits; then lets it exit."""
    watchdog = threading.Timer(limit, server.kill)  # a server that never reports is ended
    watchdog.start()
    try:
        line = server.stdout.readline()
        if not line:
            raise SystemExit(f"{name} exited with {server.wait()} before reporting")
        figures = {**json.loads(line), "peak_mib": high_water_mib(server.pid)}
    finally:
        watchdog.cancel()
    server.stdin.close()
    if server.wait(timeout=120) != 0:
        raise SystemExit(f"{name} exited with {server.returncode}")
    return figures


def serve(
    port: int,
    clients: int,
    rounds: int,
    floats: int,
    held: bool,
    plain_allocator: bool,
    inflight_mib: float,
    pause: float,
    window_kb: int,
) -> None:
    from common.allocator import give_back_large_buffers
    from common.models.linear import check_weights
    from common.tensors import Payload
    from proto.fedstock.v1 import federation_pb2 as pb
    from server.__main__ import build_server
    from server.admission import Admission
    from server.channel import as_it_is, gather
    from server.coordinator import Assignment, Coordinator
    from server.strategy import FedAvg

    if not plain_allocator:
        give_back_large_buffers()  # as `python -m server` does
    coordinator = Coordinator(poll_seconds=5)
    admission = Admission(int(inflight_mib * (1 << 20)))
    largest = min(LIMIT, admission.limit)  # as `python -m server` caps it by the budget
    server, _ = build_server(
        coordinator,
        f"127.0.0.1:{port}",
        32,
        largest,
        None,
        admission,
        receive_window_kb=window_kb,
    )
    server.start()
    idle = high_water_mib()
    provinces = coordinator.wait_for_clients(clients, timeout=300)
    sampler = Sampler() if pause else None
    strategy = FedAvg({}, check_weights)
    model = {"coef": np.zeros(floats), "intercept": np.array(0.0)}

    def accept(result):
        strategy.check_update(result.arrays, floats)
        return result

    starts, ends = [], []
    for server_round in range(1, rounds + 1):
        starts.append(time.perf_counter())
        payload = Payload.encode(model)
        assignments = {
            p: Assignment(
                pb.Task(round=server_round, kind=pb.TASK_KIND_TRAIN, parameters=payload.header),
                payload,
            )
            for p in provinces
        }
        keep = as_it_is if held else (lambda r, n=server_round: strategy.fold(n, r, None))
        results, failures = gather(
            coordinator, server_round, pb.TASK_KIND_TRAIN, assignments, accept, 600, keep
        )
        if failures:
            raise SystemExit(f"round {server_round}: {failures}")
        model = strategy.aggregate_fit(server_round, results, failures, model)
        del results, payload, assignments
        ends.append(time.perf_counter())
    coordinator.stop("the benchmark is done", False, 30)
    server.stop(grace=5)
    figures = {"idle_mib": idle, "median_round": median_interval(ends)}
    if sampler is not None:
        sampler.stop()
        # Each round's first 80 % of the clients' pause: the model sent, no update yet.
        figures["downloaded_mib"] = [
            sampler.highest(start, start + 0.8 * pause) for start in starts
        ]
    report_then_wait(figures)


def client(port: int, province: str, pause: float) -> None:
    import grpc
    import pandas as pd

    from client.daemon import Backoff, ClientDaemon
    from client.local import LocalWork, Outcome
    from proto.fedstock.v1 import federation_pb2 as pb
    from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc

    address = f"127.0.0.1:{port}"
    daemon = ClientDaemon(
        province, address, None, LocalWork(pd.DataFrame(index=range(ROWS))), 30, 120, LIMIT
    )
    rng = np.random.default_rng(sum(map(ord, province)))
    with grpc.insecure_channel(address) as channel:
        daemon._join(pb_grpc.FederationStub(channel), Backoff(patience=120))
        while True:
            task, parameters = daemon._next_task()
            if task.kind == pb.TASK_KIND_STOP:
                return
            if task.kind != pb.TASK_KIND_TRAIN:
                continue
            time.sleep(pause)
            update = {k: a + rng.normal(scale=1e-3, size=a.shape) for k, a in parameters.items()}
            daemon._submit(task, Outcome(ROWS, {}, update))


def run(
    clients: int,
    rounds: int,
    floats: int,
    held: bool,
    plain_allocator: bool,
    inflight_mib: float,
    pause: float,
    window_kb: int,
    logs: Path,
) -> dict:
    # Here, not at the top: common.launch imports pandas (through the synthetic data), which
    # `python -m server` never loads, and the server role must hold only what the server holds.
    from common.launch import SINGLE_THREADED, free_port

    port = free_port()
    me = [sys.executable, "-m", "tests.bench_fold"]
    logs.mkdir(parents=True, exist_ok=True)
    name = (
        f"{'held' if held else 'folded'}-{'glibc' if plain_allocator else 'given-back'}"
        f"-{inflight_mib:g}-{window_kb}"
    )
    # One BLAS thread a process, as LocalFederation and the Flower side of bench_flower run.
    env = {**os.environ, **SINGLE_THREADED}
    server = subprocess.Popen(
        [
            *me,
            *("serve", "--port", str(port), "--clients", str(clients), "--rounds", str(rounds)),
            *("--floats", str(floats), *(["--held"] if held else [])),
            *(["--plain-allocator"] if plain_allocator else []),
            *("--max-inflight-mb", str(inflight_mib), "--pause", str(pause)),
            *("--receive-window-kb", str(window_kb)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(logs / f"{name}-server.log").open("w"),
        text=True,
        env=env,
    )
    time.sleep(1.0)  # the server's port first; a client that is early retries its join anyway
    client_logs = [logs / f"{name}-client-{p}.log" for p in PROVINCES[:clients]]
    workers = [
        subprocess.Popen(
            [
                *me,
                *("client", "--port", str(port), "--province", log.stem.split("-client-")[1]),
                *("--pause", str(pause)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            env=env,
        )
        for log in client_logs
    ]
    figures = read_report(server, f"the {name} server (logs in {logs})")
    for worker in workers:
        worker.wait(timeout=120)
    # Uploads the server told to come again, each a pause.
    figures["resent"] = sum(
        log.read_text().count("did not accept the outcome") for log in client_logs
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    sub = parser.add_subparsers(dest="role")
    serve_p = sub.add_parser("serve", allow_abbrev=False)
    serve_p.add_argument("--port", type=int, required=True)
    serve_p.add_argument("--clients", type=int, required=True)
    serve_p.add_argument("--rounds", type=int, required=True)
    serve_p.add_argument("--floats", type=int, required=True)
    serve_p.add_argument("--held", action="store_true")
    serve_p.add_argument("--plain-allocator", action="store_true")
    serve_p.add_argument("--max-inflight-mb", type=float, required=True)
    serve_p.add_argument("--pause", type=float, required=True)
    serve_p.add_argument("--receive-window-kb", type=int, required=True)
    client_p = sub.add_parser("client", allow_abbrev=False)
    client_p.add_argument("--port", type=int, required=True)
    client_p.add_argument("--province", required=True)
    client_p.add_argument("--pause", type=float, required=True)
    parser.add_argument("--clients", type=int, default=9, choices=range(1, len(PROVINCES) + 1))
    parser.add_argument("--rounds", type=int, default=10, help="at least 2: rounds 2..R are timed")
    parser.add_argument("--floats", type=int, default=1_250_000, help="weights in each update")
    parser.add_argument(
        "--allocator",
        choices=("both", "given-back", "glibc"),
        default="both",
        help="the server's allocator as `python -m server` sets it (given-back), glibc's "
        "default, or both side by side",
    )
    parser.add_argument(
        "--keep",
        choices=("both", "held", "folded"),
        default="both",
        help="keep every update to the round's end (held), fold each as it counts, or both",
    )
    parser.add_argument(
        "--max-inflight-mb",
        type=float,
        nargs="+",
        default=[DEFAULT_INFLIGHT_MIB],
        help="the server's in-flight budgets to run side by side, in MiB (default: the "
        "server's own)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="seconds each client waits between taking the model and sending its update; "
        "with it the server also prints what it holds once the model has gone down",
    )
    parser.add_argument(
        "--receive-window-kb",
        type=int,
        nargs="+",
        default=[DEFAULT_RECEIVE_WINDOW_KB],
        help="each upload stream's receive window at the server, in KiB, to run side by side "
        "(0: sized by gRPC's probe; default: the server's own)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/fold"))
    args = parser.parse_args()
    if args.role == "serve":
        serve(
            args.port,
            args.clients,
            args.rounds,
            args.floats,
            args.held,
            args.plain_allocator,
            args.max_inflight_mb,
            args.pause,
            args.receive_window_kb,
        )
        return
    if args.role == "client":
        client(args.port, args.province, args.pause)
        return
    if args.pause < 0:
        parser.error("--pause must not be negative")
    for window_kb in args.receive_window_kb:
        try:
            server_options(window_kb)
        except ValueError as error:
            parser.error(f"--receive-window-kb: {error}")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the median round is over rounds 2..R")
    print(f"{args.clients} clients, {args.rounds} rounds, {args.floats * 8 / 1e6:.1f} MB an update")
    print(
        f"{'server':<22} {'budget MiB':>10} {'window KiB':>10} {'idle MiB':>9} "
        f"{'peak RSS MiB':>13} {'median round s':>15} {'uploads resent':>15}"
    )
    plain = {"both": (True, False), "given-back": (False,), "glibc": (True,)}[args.allocator]
    keep = {"both": (True, False), "held": (True,), "folded": (False,)}[args.keep]
    for plain_allocator, held, budget, window_kb in itertools.product(
        plain, keep, args.max_inflight_mb, args.receive_window_kb
    ):
        figures = run(
            args.clients,
            args.rounds,
            args.floats,
            held,
            plain_allocator,
            budget,
            args.pause,
            window_kb,
            args.out,
        )
        name = f"{'held' if held else 'folded'}, {'glibc' if plain_allocator else 'given back'}"
        print(
            f"{name:<22} {budget:>10g} {window_kb:>10} {figures['idle_mib']:>9.0f} "
            f"{figures['peak_mib']:>13.0f} {figures['median_round']:>15.3f} "
            f"{figures['resent']:>15}"
        )
        if "downloaded_mib" in figures:
            rows = " ".join(f"{mib:.0f}" for mib in figures["downloaded_mib"])
            print(f"{'':<22} downloaded MiB, round by round: {rows}")
    if args.pause:
        print("(downloaded: the server's highest RSS once the model has gone down, each round)")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
