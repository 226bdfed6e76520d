"""How long a federation takes to start: each program's imports, and `make demo`'s processes from
launch to listening, joined and the final metrics.

`make bench-launch`. A process's imports are timed in a fresh interpreter; the federation is
started as `make demo` starts it (a CA made for the run, mutual TLS, nine province processes),
and the times are read off the processes' logs as their lines appear. Prints figures and
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.launch import LocalFederation, log_tail

PROGRAMS = ("server.__main__", "client.__main__")
HEAVY = ("sklearn", "scipy", "pandas", "dp_accounting")
PROBE = (
    "import sys, time; t = time.perf_counter(); import {module}; "
    "print(time.perf_counter() - t, *[m for m in {heavy!r} if m in sys.modules])"
)


def import_seconds(module: str, repeats: int) -> tuple[float, list[str]]:
    """The median seconds `import module` takes in a fresh interpreter, and the heavy
    libraries it brought in."""
    runs = []
    for _ in range(repeats):
        probe = PROBE.format(module=module, heavy=HEAVY)
        words = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
        runs.append(float(words[0]))
    return statistics.median(runs), words[1:]


def first_line(log: Path, needle: str) -> bool:
    return log.exists() and needle in log.read_text(errors="replace")


def cpu_seconds(pid: int) -> float:
    """The user and system CPU seconds process `pid` has used: what its start costs, whatever
    else the machine is running (wall seconds on a busy machine are mostly waiting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def launch(model: str, rows: int, rounds: int, timeout: float) -> dict[str, float]:
    """Seconds from the first process's start to each milestone of one federation's run."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        federation = LocalFederation(out, model, rounds, rows)
        start = time.perf_counter()
        federation.start()
        assert federation.server is not None
        processes = {"server listening": federation.server, **federation.clients}
        pending = {"server listening": (out / "server.log", "listening on")}
        pending |= {p: (out / f"{p}.log", "joined server") for p in federation.provinces}
        seen: dict[str, float] = {}
        cpu: dict[str, float] = {}
        end = start + timeout
        while federation.server.poll() is None and time.perf_counter() < end:
            for name, (log, needle) in list(pending.items()):
                if first_line(log, needle):
                    seen[name] = time.perf_counter() - start
                    cpu[name] = cpu_seconds(processes[name].pid)
                    del pending[name]
            time.sleep(0.02)
        finished = time.perf_counter() - start
        codes = federation.wait(timeout=60)
        if codes["server"] != 0:
            raise RuntimeError(f"the server failed ({codes}): {log_tail(out / 'server.log')}")
        joined = [seen[p] for p in federation.provinces if p in seen]
        return {
            "server listening": seen.get("server listening", float("nan")),
            "first client joined": min(joined, default=float("nan")),
            "last client joined": max(joined, default=float("nan")),
            "final metrics (server exits)": finished,
            "server CPU s to listening": cpu.get("server listening", float("nan")),
            "client CPU s to joined (median)": statistics.median(
                [cpu[p] for p in federation.provinces if p in cpu] or [float("nan")]
            ),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--model", default="lr-exact")
    parser.add_argument("--rows", type=int, default=270_000, help="rows of the synthetic market")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    for module in PROGRAMS:
        seconds, heavy = import_seconds(module, args.repeats)
        print(
            f"import {module}: {seconds:.2f} s (median of {args.repeats}); brings in: "
            f"{', '.join(heavy) or 'none of ' + ', '.join(HEAVY)}",
            flush=True,
        )
    runs = [launch(args.model, args.rows, args.rounds, args.timeout) for _ in range(args.repeats)]
    print(
        f"make demo's processes, --model {args.model}, {args.rows:,} rows, {args.rounds} "
        f"round(s), seconds from launch (median of {args.repeats}):"
    )
    for milestone in runs[0]:
        figures = [run[milestone] for run in runs]
        print(
            f"  {milestone:30} {statistics.median(figures):6.2f}  "
            f"(runs: {', '.join(f'{f:.2f}' for f in figures)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
