"""The province's own record of the server's ledger: one receipt per entry, as it was sent.

Every task brings the receipts (index, hash, signature) of the ledger entries written since the
province's previous task. The province appends them to its receipts file and never changes
one: a server that later edits, drops, reorders or re-chains its ledger, even re-signing it
with its own key, cannot make it agree with this file (`python -m server.ledger verify LEDGER
--receipts DIR`). A server that sends a different hash for an entry already received is caught
at once, and the province stops.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

HASH = re.compile(r"[0-9a-f]{64}")


class ReceiptError(ValueError):
    """A receipts file that cannot be read, or a receipt that contradicts one already kept."""


@dataclass(frozen=True)
class Receipt:
    index: int
    hash: str
    signature: str

    @classmethod
    def parse(cls, data: object) -> Receipt:
        """A receipt from its JSON form, or ValueError saying what is wrong with it."""
        if not isinstance(data, dict) or set(data) != {"index", "hash", "signature"}:
            raise ValueError("a receipt is an object with index, hash and signature")
        index, digest, signature = data["index"], data["hash"], data["signature"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 1:
            raise ValueError(f"index {index!r} is not a positive whole number")
        if not isinstance(digest, str) or not HASH.fullmatch(digest):
            raise ValueError(f"hash {digest!r} is not a SHA-256 hex digest")
        if not isinstance(signature, str) or not signature:
            raise ValueError("the signature is missing")
        return cls(index, digest, signature)


def read_receipts(path: Path) -> list[Receipt]:
    """Every receipt in a province's file, or ReceiptError naming the bad line."""
    held: list[Receipt] = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            try:
                held.append(Receipt.parse(json.loads(line)))
            except ValueError as error:
                raise ReceiptError(f"{path} line {number} is not a receipt: {error}") from None
    return held


class ReceiptBook:
    """Appends the receipts a province is sent to its file, refusing any that contradicts one
    it already holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.held = {r.index: r for r in read_receipts(path)} if path.exists() else {}

    def record(self, receipts: Iterable[Receipt]) -> list[Receipt]:
        """Keep the new receipts; ReceiptError if the server contradicts an earlier one."""
        new = self.check(receipts)
        self.keep(new)
        return new

    def check(self, receipts: Iterable[Receipt]) -> list[Receipt]:
        """The receipts not held yet; ReceiptError if the server contradicts an earlier one.
        Nothing is kept until `keep`: a daemon checks a task's receipts before doing the task
        and keeps them once its outcome has left, so the disk's flush is off the round's path."""
        new: dict[int, Receipt] = {}
        for receipt in receipts:
            kept = self.held.get(receipt.index) or new.get(receipt.index)
            if kept is not None and kept.hash != receipt.hash:
                raise ReceiptError(
                    f"the server now says ledger entry {receipt.index} has hash {receipt.hash}, "
                    f"but it sent {kept.hash} before ({self.path}): it rewrote its ledger"
                )
            if kept is None:
                new[receipt.index] = receipt
        return list(new.values())

    def keep(self, new: list[Receipt]) -> None:
        """Append receipts `check` found new to the file, durably, and hold them."""
        if not new:
            return
        with self.path.open("a") as out:
            out.writelines(json.dumps(asdict(r), sort_keys=True) + "\n" for r in new)
            out.flush()
            os.fsync(out.fileno())
        self.held.update((r.index, r) for r in new)
