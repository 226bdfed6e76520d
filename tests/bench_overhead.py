"""Where a framework-only round's time goes: the median round, and the CPU each process and
each of the server's threads spends on a round, read from /proc between two rounds of a run.

`make bench-overhead`: nine client processes with 300 rows each (bench_flower's job), lr-sgd,
train + federated evaluation, plaintext on loopback; `--rows-per-province 300000` counts the
same for `make bench-flower`'s full job, where the clients' local work dominates. CPU is
counted from the log line of round `--rounds // 4` to that of round `3 * --rounds // 4`, so
start-up and the final analysis are left out. `--neighbours N` runs N processes beside the
federation that do none of fedstock's work (`--neighbour-work`: an epoch's shuffle and product
over 300,000 x 9 rows, or a bare Python loop), to show what busy cores alone do to the server's
CPU. Prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common.launch import LocalFederation
from tests.bench_flower import province_frames, write_data

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def server_threads(pid: int) -> Counter[str]:
    """CPU seconds of the server's threads: its main thread (the round loop), its other Python
    threads (gRPC handlers, the poller, watchers) and gRPC's own C threads, by kind."""
    kinds: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            seconds = cpu_seconds(task / "stat")
        except OSError:  # the thread ended
            continue
        kind = "main thread" if task.name == str(pid) else f"{name} threads"
        kinds[kind] += seconds
    return kinds


def switches(pid: int) -> Counter[str]:
    """Times the server's threads gave up a core, by kind as `server_threads` counts them: a
    wake-up each (voluntary) or a preemption (involuntary), whatever the machine's clock."""
    kinds: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text().splitlines()
        except OSError:  # the thread ended
            continue
        kind = "main thread" if task.name == str(pid) else f"{name} threads"
        kinds[kind] += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
    return kinds


# What a neighbour does, forever: an epoch's memory traffic, or only a core's time.
NEIGHBOUR_WORK = {
    "epoch": "import numpy as np\n"
    "rng = np.random.default_rng(0)\n"
    "x, w = rng.normal(size=(300_000, 9)), np.ones(9)\n"
    "while True:\n"
    "    y = x[rng.permutation(len(x))] @ w\n"
    "    float(np.mean(y * y))\n",
    "spin": "while True:\n    pass\n",
}


def wait_for(log: Path, line: str, federation: LocalFederation) -> None:
    assert federation.server is not None
    while line not in log.read_text(errors="replace"):
        if federation.server.poll() is not None:
            raise SystemExit(f"the server ended before {line!r} (logs in {log.parent})")
        time.sleep(0.02)


def run(parquet: Path, out: Path, rounds: int, rows: int) -> None:
    federation = LocalFederation(
        out, "lr-sgd", rounds, data=parquet, insecure=True, server_args=["--poll-seconds", "5"]
    )
    federation.start()
    assert federation.server is not None
    log, first, last = out / "server.log", rounds // 4, 3 * rounds // 4
    wait_for(log, f"round {first}/{rounds}:", federation)
    began, before = time.perf_counter(), server_threads(federation.server.pid)
    switched = switches(federation.server.pid)
    clients_before = {
        p: cpu_seconds(Path(f"/proc/{c.pid}/stat")) for p, c in federation.clients.items()
    }
    wait_for(log, f"round {last}/{rounds}:", federation)
    after, wall = server_threads(federation.server.pid), time.perf_counter() - began
    switched = switches(federation.server.pid) - switched
    clients_after = {
        p: cpu_seconds(Path(f"/proc/{c.pid}/stat")) for p, c in federation.clients.items()
    }
    codes = federation.wait(timeout=600)
    if set(codes.values()) != {0}:
        raise SystemExit(f"the run failed: exit codes {codes} (logs in {out})")
    counted = last - first
    records = federation.results()["rounds"][first:last]
    per_round = {k: (after[k] - before.get(k, 0.0)) / counted * 1000 for k in after}
    clients = [(clients_after[p] - clients_before[p]) / counted * 1000 for p in clients_after]
    print(
        f"\n{rounds} rounds, 9 clients x {rows:,} rows, rounds {first + 1}..{last} counted "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"  median round {statistics.median(r['seconds'] for r in records) * 1000:.1f} ms, "
        f"server overhead {statistics.median(r['overhead_seconds'] for r in records) * 1000:.1f} ms"
    )
    ends = [r["interval_seconds"] for r in records if r.get("interval_seconds") is not None]
    if ends:  # recorded since the recording was cut: the span bench-flower compares
        print(
            f"  median round end to round end (interval_seconds, the recording included): "
            f"{statistics.median(ends) * 1000:.1f} ms"
        )
    print(
        f"  wall time a round, log line to log line (the recording between rounds included): "
        f"{wall / counted * 1000:.1f} ms"
    )
    print(f"  server CPU a round: {sum(per_round.values()):.1f} ms")
    for kind, ms in sorted(per_round.items(), key=lambda item: -item[1]):
        if ms >= 0.05:
            print(f"    {kind:24} {ms:6.2f} ms")
    print(
        "  server context switches a round: "
        + ", ".join(f"{kind} {n / counted:.1f}" for kind, n in sorted(switched.items()) if n)
    )
    print(
        f"  client CPU a round: median {statistics.median(clients):.1f} ms, "
        f"{sum(clients):.1f} ms over the nine"
    )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows-per-province", type=int, default=300)
    parser.add_argument("--neighbours", type=int, default=0)
    parser.add_argument("--neighbour-work", choices=sorted(NEIGHBOUR_WORK), default="epoch")
    args = parser.parse_args(argv)
    if args.neighbours < 0:
        parser.error("--neighbours must be 0 or more")
    code = NEIGHBOUR_WORK[args.neighbour_work]
    neighbours = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(args.neighbours)]
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            parquet, _ = write_data(province_frames(args.rows_per_province, 7), out)
            if neighbours:
                print(f"{len(neighbours)} neighbours: {args.neighbour_work}")
            for repeat in range(args.repeats):
                run(parquet, out / f"run-{repeat}", args.rounds, args.rows_per_province)
    finally:
        for neighbour in neighbours:
            neighbour.kill()
            neighbour.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
