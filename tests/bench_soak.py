"""A long run with nine clients on tiny data: does the server's memory stay flat, and its round
time, as rounds accumulate?

`make bench-soak` (1,000 rounds by default). The server's resident memory is read from /proc
each time the log reports another `--every` rounds; a growing run costs memory or time in
something that keeps every round (results, checkpoint, ledger, live state), which is what this
measures. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from common.launch import LocalFederation, log_tail

ROUND_LINE = re.compile(r"round (\d+)/\d+: .*, ([0-9.]+) s \(server overhead")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def soak(rounds: int, rows: int, every: int, model: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        federation = LocalFederation(Path(out), model, rounds, rows, insecure=True)
        federation.start()
        assert federation.server is not None
        log, seen, samples, seconds = Path(out) / "server.log", 0, [], {}
        offset = 0
        try:
            while federation.server.poll() is None:
                time.sleep(0.2)
                with log.open("rb") as text:
                    text.seek(offset)
                    chunk = text.read()
                complete = chunk.rfind(b"\n") + 1
                offset += complete
                for match in ROUND_LINE.finditer(chunk[:complete].decode(errors="replace")):
                    number, took = int(match.group(1)), float(match.group(2))
                    seconds[number] = took
                    if number // every > seen // every:
                        pid = federation.server.pid
                        samples.append((number, rss_mib(pid), time.monotonic()))
                    seen = number
            codes = federation.wait(timeout=600)
        finally:
            federation.kill()
        if set(codes.values()) != {0}:
            print(f"the run failed: exit codes {codes}\n{log_tail(log, 10)}")
            return
        size = federation.results_path.stat().st_size
    print(f"\nsoak: {model}, {rounds:,} rounds, nine clients, {rows:,} rows in the market")
    print(f"{'round':>7} {'server RSS MiB':>15} {'round ms (median)':>18} {'wall ms a round':>16}")
    previous = None
    for number, rss, seen_at in samples:
        block = [seconds[r] for r in range(max(1, number - every + 1), number + 1) if r in seconds]
        wall = (
            f"{(seen_at - previous[1]) / (number - previous[0]) * 1000:>16.1f}" if previous else ""
        )
        print(f"{number:>7} {rss:>15.1f} {statistics.median(block) * 1000:>18.1f} {wall}")
        previous = (number, seen_at)
    print(
        "round ms: the rounds' own seconds as results.json records them; wall ms: time between\n"
        "samples over the rounds between them, which includes recording each round"
    )
    if len(samples) >= 3:
        warm, last = samples[1][1], samples[-1][1]
        print(
            f"RSS growth after warm-up (round {samples[1][0]} to {samples[-1][0]}): "
            f"{(last - warm) / warm * 100:+.1f} % (target: under 5 %)"
        )
    print(f"results.json at the end: {size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=9000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--model", default="lr-sgd")
    args = parser.parse_args()
    soak(args.rounds, args.rows, args.every, args.model)


if __name__ == "__main__":
    main()
