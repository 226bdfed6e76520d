"""A province's durable record of the sums it has partially decrypted under threshold HE.

Two decryptions of the same round's phase over different contributors would let the server
difference one province out: the sum over nine minus the sum over eight is the ninth's upload.
So a province decrypts one sum per (round, phase) of a run: asked again for the same round and
phase, it answers only if the contributors and their signed uploads' digests are the ones it
decrypted before (a repeated question reveals nothing new), and refuses anything else. The record
is one JSON line per decryption, written and flushed to disk before the partial decryption
leaves, so a province that restarts keeps refusing. It belongs to one run: the first decryption
fixes the run's identity, and a decryption asked for another run is refused, since a server free
to start runs at will could otherwise difference a province out of the statistics. A record that
cannot be read is refused, never read as empty.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from client.receipts import HASH


class RecordError(RuntimeError):
    """A decryption this province will not make, or a record it cannot read; the message says
    why."""


@dataclass(frozen=True)
class Decryption:
    """One sum decrypted: its run, round and phase, and each contributor's upload digest."""

    run: str
    round: int
    phase: str
    uploads: dict[str, str]

    @classmethod
    def parse(cls, data: object) -> Decryption:
        """A decryption from its JSON form, or ValueError saying what is wrong with it."""
        if not isinstance(data, dict) or set(data) != {"run", "round", "phase", "uploads"}:
            raise ValueError("a decryption is an object with run, round, phase and uploads")
        run, number, phase, uploads = data["run"], data["round"], data["phase"], data["uploads"]
        if not isinstance(run, str) or not run or not isinstance(phase, str) or not phase:
            raise ValueError("its run and phase must be non-empty text")
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"round {number!r} is not a whole number")
        if not isinstance(uploads, dict) or not uploads:
            raise ValueError("its uploads must map provinces to digests")
        for province, digest in uploads.items():
            if not isinstance(digest, str) or not HASH.fullmatch(digest):
                raise ValueError(f"{province}'s digest {digest!r} is not a SHA-256 hex digest")
        return cls(run, number, phase, dict(uploads))


class DecryptionRecord:
    """The sums this province has decrypted, kept in `path` (None: in memory only, for runs in
    one process, where the province lives no longer than the run)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.run: str | None = None
        self.done: dict[tuple[int, str], Decryption] = {}
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise RecordError(f"cannot read the HE decryption record {path}: {error}") from None
        for number, line in enumerate(lines, start=1):
            try:
                decryption = Decryption.parse(json.loads(line))
                self._hold(decryption)
            except ValueError as error:  # json's errors among them
                raise RecordError(
                    f"the HE decryption record {path} line {number} is not a decryption: "
                    f"{error}; refusing to decrypt, since this province cannot tell which sums "
                    "it has decrypted (restore the file, or start a new run with a new record)"
                ) from None

    def _hold(self, decryption: Decryption) -> None:
        if self.run is not None and decryption.run != self.run:
            raise ValueError(f"it holds runs {self.run} and {decryption.run}")
        key = (decryption.round, decryption.phase)
        if key in self.done and self.done[key] != decryption:
            raise ValueError(f"it holds two sums of round {key[0]}'s {key[1]}")
        self.run = decryption.run
        self.done[key] = decryption

    def admit(self, decryption: Decryption) -> None:
        """Record `decryption` before it is made; RecordError if this province decrypted another
        sum of the same round and phase, or decrypts for another run."""
        if self.run is not None and decryption.run != self.run:
            raise RecordError(
                f"asked to decrypt for HE run {decryption.run}, but this province decrypts for "
                f"run {self.run} ({self.path or 'in memory'}); refusing (a new run needs a new "
                "record: start the province with a new --receipts folder)"
            )
        before = self.done.get((decryption.round, decryption.phase))
        if before == decryption:
            return  # the same sum again: its partial decryption is the one already sent
        if before is not None:
            raise RecordError(
                f"asked to decrypt twice in round {decryption.round} ({decryption.phase}): "
                f"first the uploads of {', '.join(sorted(before.uploads))}, now of "
                f"{', '.join(sorted(decryption.uploads))}, not the same uploads; refusing (the "
                "two sums would give their difference: is the server tampering?)"
            )
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as out:
                out.write(json.dumps(asdict(decryption), sort_keys=True) + "\n")
                out.flush()
                os.fsync(out.fileno())
        self._hold(decryption)
