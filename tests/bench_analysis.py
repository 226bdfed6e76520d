"""`make bench-analysis`: what the end-of-run analysis finds and costs, on real processes.

For each model, the federation trains as usual and then runs the analysis (contributions,
permutation importance, personalisation) in its one extra phase; printed are the server's
summary of it, the phase's wall time beside the training time, and each province's own
seconds. Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common.data.synthetic import DEFAULT_ROWS
from common.launch import LocalFederation
from server.summary import format_analysis

ANALYSIS = ["--contributions", "--importance", "--personalise", "--poll-seconds", "2"]


def measure(model: str, rows: int, rounds: int, out: Path, extra: list[str]) -> None:
    federation = LocalFederation(out / model, model, rounds, rows, server_args=ANALYSIS + extra)
    federation.start()
    codes = federation.wait(timeout=3600)
    failed = {name: code for name, code in codes.items() if code != 0}
    if failed or not federation.results_path.exists():
        print(f"{model}: failed {failed}; see the logs in {out / model}")
        return
    results = federation.results()
    run = results["analysis"]
    print(f"\n=== {model}: {rows:,} rows, {rounds} rounds ===")
    print("\n".join(format_analysis(results)).strip())
    print(
        f"training {results['final']['train_seconds']:.2f} s; the analysis phase adds "
        f"{run['seconds']:.2f} s; each province's part (s): "
        + ", ".join(f"{p} {s:.2f}" for p, s in sorted(run["client_seconds"].items()))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m tests.bench_analysis", description=__doc__
    )
    parser.add_argument("--models", nargs="+", default=["lr", "svm"])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a temporary one)")
    args, extra = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        for model in args.models:
            measure(model, args.rows, args.rounds, out, extra)


if __name__ == "__main__":
    main()
