"""The command line of `python -m server.healthcheck`: flags onto `server.healthcheck.check`."""

from __future__ import annotations

import argparse
import sys

from server.healthcheck import check


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m server.healthcheck",
        description="Exit 0 if the gRPC health service at ADDRESS reports SERVING, else 1.",
    )
    parser.add_argument("--address", default="127.0.0.1:50051", help="HOST:PORT of the server")
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="deadline for the check, seconds (default 3)"
    )
    parser.add_argument(
        "--service", default="", help='service name to ask about (default "", the server)'
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    serving, message = check(args.address, args.timeout, args.service)
    print(message, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
