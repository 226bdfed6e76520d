"""The command line of `python -m server.localrun`: the server and nine province clients as
processes here (common/launch.py), then the summary of their run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.data.synthetic import DEFAULT_ROWS, DEFAULT_SEED
from common.launch import LocalFederation, log_tail
from server.summary import format_summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m server.localrun",
        description="Run the server and nine province clients as processes on this machine, "
        "then print MSE per province and overall.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", default="lr", help="model to train (see python -m server --help)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="training rounds")
    parser.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help="rows of the synthetic market"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic market"
    )
    parser.add_argument(
        "--data", type=Path, help="folder of <province>.parquet instead of synthetic data"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="folder for results and logs"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before giving up")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Flags it does not know are the server's (`python -m server --help`)."""
    args, server_args = build_parser().parse_known_args(argv)
    federation = LocalFederation(
        args.out, args.model, args.rounds, args.rows, args.seed, args.data, server_args=server_args
    )
    print(
        f"starting the server on {federation.address} and {len(federation.provinces)} province "
        f"clients; logs in {args.out}/",
        flush=True,
    )
    federation.start()
    codes = federation.wait(args.timeout)
    failed = {name: code for name, code in codes.items() if code != 0}
    if federation.results_path.exists():
        print(format_summary(federation.results()))
        print(f"\nresults: {federation.results_path}")
    if failed.get("server") is not None:
        print(
            f"\nthe server exited with code {failed['server']}; it said:\n"
            f"{log_tail(args.out / 'server.log')}",
            file=sys.stderr,
        )
    if failed:
        print(
            f"\nprocesses that did not exit cleanly (exit codes): {failed}; see their logs in "
            f"{args.out}/",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
