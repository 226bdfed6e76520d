"""`make bench-liveview`: what the live view costs the server, over real processes.

Runs one federation twice: without the live view, then with it and a poller that asks for
/api/state and /metrics every --interval seconds for the whole run (the page itself asks once a
second). Prints each endpoint's response times and sizes, and the rounds' mean wall seconds and
server CPU seconds in both runs. Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common.launch import LocalFederation, free_port

ENDPOINTS = ("/api/state", "/metrics")


class Poller(threading.Thread):
    """Asks for every endpoint in turn until stopped; keeps response times and sizes."""

    def __init__(self, base: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.base, self.interval = base, interval
        self.seconds: dict[str, list[float]] = {path: [] for path in ENDPOINTS}
        self.sizes: dict[str, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            for path in ENDPOINTS:
                began = time.perf_counter()
                try:
                    with urllib.request.urlopen(self.base + path, timeout=10) as reply:
                        body = reply.read()
                except OSError:
                    continue  # not up yet, or already gone
                self.seconds[path].append(time.perf_counter() - began)
                self.sizes[path] = len(body)


def federate(args: argparse.Namespace, observed: bool) -> tuple[dict, Poller | None]:
    with tempfile.TemporaryDirectory() as out:
        http_port = free_port()
        flags = ["--http-port", str(http_port)] if observed else []
        federation = LocalFederation(
            Path(out),
            args.model,
            args.rounds,
            args.rows,
            args.seed,
            server_args=["--poll-seconds", "2", *flags],
        )
        poller = Poller(f"http://127.0.0.1:{http_port}", args.interval) if observed else None
        federation.start()
        if poller:
            poller.start()
        codes = federation.wait(timeout=1800)
        if poller:
            poller.stopped.set()
            poller.join()
        if set(codes.values()) != {0}:
            raise RuntimeError(f"processes failed: {codes}")
        return federation.results(), poller


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m tests.bench_liveview", description=__doc__
    )
    parser.add_argument("--model", default="lr-sgd")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between polls")
    args = parser.parse_args(argv)

    runs = {"off": federate(args, observed=False)[0]}
    runs["polled"], poller = federate(args, observed=True)
    print(
        f"live view: {args.model}, {args.rounds} rounds, {args.rows} rows, "
        f"polled every {args.interval:g} s\n"
    )
    print(f"{'endpoint':<12}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'bytes':>9}")
    for path in ENDPOINTS:
        seconds = poller.seconds[path]
        if not seconds:
            print(f"{path:<12}{0:>9}")
            continue
        print(
            f"{path:<12}{len(seconds):>9}{percentile(seconds, 0.5) * 1e3:>9.2f}"
            f"{percentile(seconds, 0.95) * 1e3:>9.2f}{max(seconds) * 1e3:>9.2f}"
            f"{poller.sizes[path]:>9}"
        )
    print(f"\n{'live view':<12}{'round s':>10}{'server CPU s':>14}  (means over rounds)")
    for name, results in runs.items():
        rounds = results["rounds"]
        wall = statistics.mean(r["seconds"] for r in rounds)
        cpu = statistics.mean(r["server_cpu_seconds"] for r in rounds)
        print(f"{name:<12}{wall:>10.4f}{cpu:>14.4f}")


if __name__ == "__main__":
    main()
