"""The command line of `python -m server.ledger`: flags onto `server.ledger.verify`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server import ledger
from server.ledger import LedgerError, ReceiptError, verify


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m server.ledger",
        description=ledger.__doc__.splitlines()[0],
    )
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser(
        "verify",
        allow_abbrev=False,
        help="check a ledger; exit 0 if intact, 1 if not, 2 if it cannot be checked",
    )
    checking.add_argument("file", type=Path)
    checking.add_argument(
        "--head",
        help="the hash the last entry must have (the results file's ledger_head): this also "
        "catches entries cut off the end",
    )
    checking.add_argument(
        "--ca",
        type=Path,
        help="the federation's ca.pem: every entry must be signed by the server certificate it "
        "issued (without it, signatures are checked against the certificate each entry records)",
    )
    checking.add_argument(
        "--receipts",
        type=Path,
        metavar="DIR",
        help="a folder of provinces' receipts files (<province>.jsonl): every receipt must match "
        "its entry, which catches a ledger rewritten even with the server's own key",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        verdict = verify(args.file, args.head, args.ca, args.receipts)
    except OSError as error:
        print(f"cannot read {error.filename or args.file}: {error.strerror}", file=sys.stderr)
        return 2
    except ReceiptError as error:
        print(f"{args.file}: cannot check: {error}", file=sys.stderr)
        return 2
    except LedgerError as error:
        print(f"{args.file}: BROKEN: {error}", file=sys.stderr)
        return 1
    print(f"{args.file}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
