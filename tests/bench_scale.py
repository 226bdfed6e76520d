"""Hundreds of members' sessions against one server: do its rounds complete, and what does each
session cost it in memory and CPU?

`make bench-scale` (100 and 1,000 sessions). A members file names N members; the server is
`python -m server` as a person starts it, with --members FILE and a quorum of all N; the
sessions are fedstock's own client daemons (client/daemon.py, each its own member, its own
channel and Session stream) multiplexed as threads into a few processes, speaking the real
protocol over localhost (plaintext, or with `--tls` mutual TLS, every member with its own
certificate from `python -m server.certs --members FILE`). The synthetic market deals rows to
at most 400 members, so member i holds the rows of the paper's province i mod 9 in a small
market: rows repeat across sessions, which costs the server what distinct rows would. The
server's resident memory and CPU seconds are read from /proc. Prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from baselines.privacy import recorded
from common.launch import SINGLE_THREADED, LocalFederation, log_tail


def proc_status(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/<pid>/status (VmRSS and VmHWM in KiB, Threads)."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.split() and value.split()[0].isdigit():
            status[key] = int(value.split()[0])
    return status


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_or(last: float, pid: int) -> float:
    """The process's CPU seconds now, or `last` if it exited between the poll and the read."""
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return last


def write_members(path: Path, count: int) -> list[str]:
    names = [f"member{i:04d}" for i in range(count)]
    path.write_text("name\n" + "".join(f"{name}\n" for name in names))
    return names


def sessions(
    names: list[str], members_file: Path, address: str, rows: int, seed: int, tls: Path | None
) -> int:
    """Run one client daemon per name, each in a thread of this process (over mutual TLS with
    its own certificate when `tls` names the run's certificates); 0 if all ended well."""
    import logging

    from client.daemon import ClientDaemon
    from client.local import LocalWork
    from common.data.synthetic import synthesize
    from common.members import load
    from common.tls import client_credentials

    logging.basicConfig(level=logging.WARNING)
    members = load(members_file)
    market = list(synthesize(rows * 9, seed).values())
    failed: list[str] = []

    def serve(name: str) -> None:
        work = LocalWork(market[members.index(name) % len(market)])
        credentials = None if tls is None else client_credentials(tls, name)
        daemon = ClientDaemon(name, address, credentials, work, 600, 600, 1 << 30)
        try:
            daemon.run()
        except Exception as error:  # each session's failure is reported, the others go on
            failed.append(f"{name}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=serve, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for failure in failed:
        print(failure, file=sys.stderr)
    return 1 if failed else 0


def measure(
    count: int,
    processes: int,
    rounds: int,
    rows: int,
    timeout: float,
    server_args: tuple[str, ...] = (),
    tls: bool = False,
    model: str = "lr-sgd",
) -> dict[str, Any]:
    """Run `count` sessions of `model` to the end of a federation started with `server_args`
    (over mutual TLS if `tls`), print its figures, and return them with the row
    `baselines.privacy.recorded` makes of the run."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        names = write_members(out / "members.csv", count)
        federation = LocalFederation(
            out,
            model,
            rounds,
            provinces=tuple(names),
            members_file=out / "members.csv",
            insecure=not tls,
            # --workers is left to its default: a handler thread for every member's session.
            server_args=["--round-timeout", str(timeout), *server_args],
        )
        federation.start_server()
        server = federation.server
        assert server is not None
        while "listening on" not in (out / "server.log").read_text(errors="replace"):
            if server.poll() is not None:
                raise SystemExit(f"the server failed: {log_tail(out / 'server.log')}")
            time.sleep(0.1)
        idle = proc_status(server.pid)
        idle_cpu = cpu_seconds(server.pid)
        started = time.perf_counter()
        workers = []
        for part in range(processes):
            share = names[part::processes]
            command = [sys.executable, "-m", "tests.bench_scale", "sessions", ",".join(share)]
            command += ["--members", str(out / "members.csv"), "--server", federation.address]
            command += ["--rows", str(rows)]
            command += ["--tls-dir", str(federation.tls_dir)] if tls else []
            log = (out / f"sessions-{part}.log").open("w")
            env = {**os.environ, **SINGLE_THREADED}
            workers.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
        peak_threads, joined_rss = 0, None
        # Each session process's CPU as last read while it ran (it is gone once reaped).
        sessions_cpu = {worker.pid: 0.0 for worker in workers}
        end = started + timeout
        while server.poll() is None and time.perf_counter() < end:
            if any(worker.poll() not in (None, 0) for worker in workers):
                server.kill()
                break
            status = proc_status(server.pid)
            if "VmRSS" not in status:  # the server has exited, and is not yet reaped
                break
            peak_threads = max(peak_threads, status["Threads"])
            if joined_rss is None and "global statistics from" in (out / "server.log").read_text(
                errors="replace"
            ):
                joined_rss = status["VmRSS"]
            last = status, cpu_seconds(server.pid)
            for worker in workers:
                if worker.poll() is None:
                    sessions_cpu[worker.pid] = _cpu_or(sessions_cpu[worker.pid], worker.pid)
            time.sleep(0.2)
        took = time.perf_counter() - started
        server.wait()
        codes = [worker.wait(timeout=120) for worker in workers]
        if server.returncode != 0 or set(codes) != {0}:
            tails = "\n".join(log_tail(out / f"sessions-{p}.log") for p in range(processes))
            raise SystemExit(
                f"{count} sessions: server exit {server.returncode}, session processes {codes}\n"
                f"{log_tail(out / 'server.log', 10)}\n{tails}"
            )
        status, cpu = last
        record = federation.results()
        seconds = [r["seconds"] for r in record["rounds"]]
        completed = [r for r in record["rounds"] if len(r["clients"]) == count]
        rss, hwm = status["VmRSS"] / 1024, status["VmHWM"] / 1024
        print(
            f"\n{count} sessions in {processes} processes, {rows} rows each, {rounds} rounds of "
            f"{model} {' '.join((*server_args, 'over'))} {'mutual TLS' if tls else 'plaintext'} "
            f"(load average {os.getloadavg()[0]:.1f})"
        )
        print(f"  rounds with all {count} members: {len(completed)} of {len(seconds)}")
        print(f"  round seconds: median {statistics.median(seconds):.3f}, max {max(seconds):.3f}")
        print(f"  launch of the sessions to the server's exit: {took:.1f} s")
        print(
            f"  server RSS idle {idle['VmRSS'] / 1024:.0f} MiB, with all joined "
            f"{(joined_rss or 0) / 1024:.0f} MiB, at the end {rss:.0f} MiB, peak {hwm:.0f} MiB"
        )
        per_session = (hwm - idle["VmRSS"] / 1024) / count
        print(f"  server peak RSS above idle per session: {per_session * 1024:.0f} KiB")
        print(f"  server threads at most: {peak_threads}")
        print(
            "  server CPU from the sessions' launch to its exit (joins, statistics and date "
            f"phases included), per session and round: "
            f"{(cpu - idle_cpu) / count / rounds * 1000:.2f} ms"
        )
        clients_cpu = sum(sessions_cpu.values())
        print(
            "  session processes' CPU (all members, sampled every 0.2 s while they ran), per "
            f"session and round: {clients_cpu / count / rounds * 1000:.2f} ms"
        )
        sys.stdout.flush()
        mode = " ".join(server_args) or "plain"
        row = recorded(model, mode, record, out)
        return {
            **row,
            "members": count,
            "server_peak_rss_mib": hwm,
            "server_end_rss_mib": rss,
            "server_cpu_per_round": (cpu - idle_cpu) / rounds,
            "clients_cpu_per_round": clients_cpu / rounds,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="measure (the default)", allow_abbrev=False)
    run.add_argument("--sessions", type=int, nargs="+", default=[100, 1000])
    run.add_argument("--processes", type=int, default=4, help="processes holding the sessions")
    run.add_argument("--rounds", type=int, default=3)
    run.add_argument("--rows", type=int, default=300, help="synthetic rows a member holds, about")
    run.add_argument("--timeout", type=float, default=1800)
    run.add_argument("--tls", action="store_true", help="mutual TLS, a certificate a member")
    worker = commands.add_parser(
        "sessions", help="(internal) run sessions in this process", allow_abbrev=False
    )
    worker.add_argument("names")
    worker.add_argument("--members", type=Path, required=True)
    worker.add_argument("--server", required=True)
    worker.add_argument("--rows", type=int, required=True)
    worker.add_argument("--seed", type=int, default=7)
    worker.add_argument("--tls-dir", type=Path)
    args = parser.parse_args(argv or sys.argv[1:] or ["run"])
    if args.command == "sessions":
        return sessions(
            args.names.split(","), args.members, args.server, args.rows, args.seed, args.tls_dir
        )
    for count in args.sessions:
        measure(count, args.processes, args.rounds, args.rows, args.timeout, tls=args.tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
