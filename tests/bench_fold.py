"""`make bench-fold`: what a round of 10 MB updates costs the server's memory, held or folded.

A server process (the coordinator, its gRPC service and FedAvg, as `python -m server` runs
them, without the evaluation phase and the recording between rounds) sends a model of
`--floats` float64 weights to `--clients` client processes every round; each answers with an
update of that size over the Session stream, in 1 MiB chunks. Run four times: keeping every
update until the round ends (the held path) or folding each into the running sum as it
counts; each both with glibc's allocator as it comes and with large freed buffers given back
to the system, as `python -m server` sets it (common/allocator.py); each under every in-flight
budget asked for (`--max-inflight-mb`, uploads beyond it wait their turn). Prints each run's
server peak RSS (VmHWM) and median round. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common.launch import free_port
from common.provinces import PROVINCES
from server.admission import DEFAULT_INFLIGHT_MIB

ROWS = 1_000
LIMIT = 64 << 20  # the largest update the server takes


def high_water_mib() -> float:
    """This process's peak resident set so far, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def serve(
    port: int,
    clients: int,
    rounds: int,
    floats: int,
    held: bool,
    plain_allocator: bool,
    inflight_mib: float,
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
    server, _ = build_server(coordinator, f"127.0.0.1:{port}", 32, LIMIT, None, admission)
    server.start()
    idle = high_water_mib()
    provinces = coordinator.wait_for_clients(clients, timeout=300)
    strategy = FedAvg({}, check_weights)
    model = {"coef": np.zeros(floats), "intercept": np.array(0.0)}

    def accept(result):
        strategy.check_update(result.arrays, floats)
        return result

    seconds = []
    for server_round in range(1, rounds + 1):
        began = time.perf_counter()
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
        seconds.append(time.perf_counter() - began)
    coordinator.stop("the benchmark is done", False, 30)
    server.stop(grace=5)
    print(
        json.dumps(
            {
                "idle_mib": idle,
                "peak_mib": high_water_mib(),
                "median_round": statistics.median(seconds[1:] or seconds),
            }
        ),
        flush=True,
    )


def client(port: int, province: str) -> None:
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
            update = {k: a + rng.normal(scale=1e-3, size=a.shape) for k, a in parameters.items()}
            daemon._submit(task, Outcome(ROWS, {}, update))


def run(
    clients: int,
    rounds: int,
    floats: int,
    held: bool,
    plain_allocator: bool,
    inflight_mib: float,
    logs: Path,
) -> dict:
    port = free_port()
    me = [sys.executable, "-m", "tests.bench_fold"]
    logs.mkdir(parents=True, exist_ok=True)
    name = (
        f"{'held' if held else 'folded'}-{'glibc' if plain_allocator else 'given-back'}"
        f"-{inflight_mib:g}"
    )
    server = subprocess.Popen(
        [
            *me,
            *("serve", "--port", str(port), "--clients", str(clients), "--rounds", str(rounds)),
            *("--floats", str(floats), *(["--held"] if held else [])),
            *(["--plain-allocator"] if plain_allocator else []),
            *("--max-inflight-mb", str(inflight_mib)),
        ],
        stdout=subprocess.PIPE,
        stderr=(logs / f"{name}-server.log").open("w"),
        text=True,
    )
    time.sleep(1.0)  # the server's port first; a client that is early retries its join anyway
    client_logs = [logs / f"{name}-client-{p}.log" for p in PROVINCES[:clients]]
    workers = [
        subprocess.Popen(
            [*me, "client", "--port", str(port), "--province", log.stem.split("-client-")[1]],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        for log in client_logs
    ]
    out, _ = server.communicate(timeout=3600)
    for worker in workers:
        worker.wait(timeout=120)
    if server.returncode != 0:
        raise SystemExit(f"the {name} server exited with {server.returncode} (logs in {logs})")
    figures = json.loads(out.strip().splitlines()[-1])
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
    client_p = sub.add_parser("client", allow_abbrev=False)
    client_p.add_argument("--port", type=int, required=True)
    client_p.add_argument("--province", required=True)
    parser.add_argument("--clients", type=int, default=9, choices=range(1, len(PROVINCES) + 1))
    parser.add_argument("--rounds", type=int, default=10)
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
        )
        return
    if args.role == "client":
        client(args.port, args.province)
        return
    print(f"{args.clients} clients, {args.rounds} rounds, {args.floats * 8 / 1e6:.1f} MB an update")
    print(
        f"{'server':<22} {'budget MiB':>10} {'idle MiB':>9} {'peak RSS MiB':>13} "
        f"{'median round s':>15} {'uploads resent':>15}"
    )
    plain = {"both": (True, False), "given-back": (False,), "glibc": (True,)}[args.allocator]
    keep = {"both": (True, False), "held": (True,), "folded": (False,)}[args.keep]
    for plain_allocator, held, budget in itertools.product(plain, keep, args.max_inflight_mb):
        figures = run(
            args.clients, args.rounds, args.floats, held, plain_allocator, budget, args.out
        )
        name = f"{'held' if held else 'folded'}, {'glibc' if plain_allocator else 'given back'}"
        print(
            f"{name:<22} {budget:>10g} {figures['idle_mib']:>9.0f} {figures['peak_mib']:>13.0f} "
            f"{figures['median_round']:>15.3f} {figures['resent']:>15}"
        )
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
