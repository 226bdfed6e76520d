"""An append-only, hash-chained record of the rounds, so every round can be proven afterwards.

One JSON object per line. Each entry carries the hash of the previous one and its own hash over
its canonical form, so an edit, a deletion or a reordering breaks the chain at that entry.
`python -m server.ledger verify FILE` checks a ledger and names the first bad entry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


class LedgerError(ValueError):
    """A ledger that does not verify; the message names the first bad entry."""


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_verified(path: Path) -> list[dict[str, Any]]:
    """Every entry of the ledger, raising LedgerError at the first one that breaks the chain."""
    entries: list[dict[str, Any]] = []
    previous = GENESIS
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            where = f"entry {number} (line {number})"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise LedgerError(f"{where} is not JSON: {error}") from None
            if not isinstance(entry, dict):
                raise LedgerError(f"{where} is not an object")
            if entry.get("index") != number:
                raise LedgerError(
                    f"{where} has index {entry.get('index')!r}: entries are missing or out of order"
                )
            if entry.get("previous") != previous:
                raise LedgerError(
                    f"{where} does not follow the entry before it (previous hash differs)"
                )
            if entry.get("hash") != entry_hash(entry):
                raise LedgerError(f"{where} was altered: its content does not match its hash")
            previous = entry["hash"]
            entries.append(entry)
    return entries


class Ledger:
    """Appends entries to the ledger file, continuing the chain of what is already there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries = read_verified(path) if path.exists() else []

    @property
    def head(self) -> str:
        return self.entries[-1]["hash"] if self.entries else GENESIS

    @property
    def last_round(self) -> int:
        return self.entries[-1]["round"] if self.entries else 0

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        entry = {
            **record,
            "index": len(self.entries) + 1,
            "previous": self.head,
        }
        entry["hash"] = entry_hash(entry)
        with self.path.open("a") as out:
            out.write(json.dumps(entry, sort_keys=True, allow_nan=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self.entries.append(entry)
        return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m server.ledger", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify", allow_abbrev=False, help="check a ledger; exit 0 if intact, 1 if not"
    )
    verify.add_argument("file", type=Path)
    verify.add_argument(
        "--head",
        help="the hash the last entry must have (the results file's ledger_head): this also "
        "catches entries cut off the end",
    )
    args = parser.parse_args(argv)
    try:
        entries = read_verified(args.file)
    except OSError as error:
        print(f"cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return 2
    except LedgerError as error:
        print(f"{args.file}: BROKEN: {error}", file=sys.stderr)
        return 1
    head = entries[-1]["hash"] if entries else GENESIS
    if args.head and args.head != head:
        print(
            f"{args.file}: BROKEN: the last entry's hash is {head}, expected {args.head}: "
            "entries were removed from the end or added after it",
            file=sys.stderr,
        )
        return 1
    rounds = [e["round"] for e in entries]
    span = f"rounds {rounds[0]}–{rounds[-1]}" if rounds else "no rounds yet"
    print(f"{args.file}: intact, {len(entries)} entries, {span}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
