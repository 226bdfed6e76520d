"""The run's record: a JSON file a script can read, and beside it the rounds log it is made from.

A long run keeps thousands of round records, so each is encoded once, when it is added, and kept
only as those bytes. Every round is appended to the rounds log (`rounds.jsonl` beside the
results, one record a line), which costs the same at round 1,000 as at round 1; the results
file itself, which grows with the run, is rewritten whole at most once every `rewrite_seconds`
(a second by default) and whenever a field other than the rounds changes (the statistics, the
final result), so it is never more than that behind. A restarted run resumes its rounds from
the log (`read_rounds`), up to the round its checkpoint records."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.files import write_atomically

log = logging.getLogger("fedstock.server")

# Which layout of the results a reader is looking at; raised when a field changes meaning or
# goes away (fields are only ever added within one version).
SCHEMA_VERSION = 1
ROUNDS_LOG = "rounds.jsonl"
# How far the results file may lag the rounds log, in seconds of the run.
REWRITE_SECONDS = 1.0


def _encode(value: Any) -> bytes:
    # Compact on purpose: only then does json use its C encoder. `python -m server.summary FILE`
    # shows the file to a person.
    return json.dumps(value, allow_nan=False).encode()


def rounds_log(results: Path) -> Path:
    """Where the rounds of the run recorded in `results` are appended."""
    return results.with_name(ROUNDS_LOG)


def read_rounds(path: Path, through: int) -> list[dict[str, Any]]:
    """The round records of the log at `path` up to round `through`, in order. A last line cut
    short (the server killed while appending it) is left out with a warning; a later round is
    one its checkpoint never recorded, so it is done again. ValueError for a log that is
    damaged elsewhere: a resume must not quietly drop the middle of a run's history."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line) if line else None
        except ValueError:
            if number == len(lines):  # no newline after it: the append was cut off
                log.warning("%s: its last line was cut off mid-write; it is left out", path)
                break
            raise ValueError(f"{path} line {number} is not a JSON record") from None
        if isinstance(record, dict) and record.get("round", through + 1) <= through:
            records.append(record)
    return records


class ResultsFile:
    def __init__(
        self,
        path: Path,
        header: dict[str, Any],
        rewrite_seconds: float = REWRITE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.rounds_path = rounds_log(path)
        self._rewrite_seconds, self._clock = rewrite_seconds, clock
        # Everything but the rounds, which are in `_rounds`.
        self.data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **header, "final": None}
        # `data` as last encoded whole: what a reader and a failure record start from.
        self._head = _encode(self.data)
        # The round records as a JSON list without its brackets: grows by one record a round.
        self._rounds = bytearray()
        self._written_at = -float("inf")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rounds_path.write_bytes(b"")
        self._write()

    @property
    def head(self) -> bytes:
        """Every field but the rounds, as JSON: what a checkpoint carries of the results."""
        return self._head

    @property
    def text(self) -> bytes:
        """The results as they stand, whole: safe to read while the round loop adds to them."""
        return b"".join((self._head[:-1], b', "rounds": [', bytes(self._rounds), b"]}\n"))

    def update(self, **fields: Any) -> None:
        """Set top-level fields; `rounds` replaces the round records (a resumed run's), in the
        log as in the file."""
        rounds = fields.pop("rounds", None)
        self.data.update(fields)
        self._head = _encode(self.data)
        if rounds is not None:
            encoded = [_encode(r) for r in rounds]
            self._rounds = bytearray(b",".join(encoded))
            write_atomically(self.rounds_path, b"".join(e + b"\n" for e in encoded))
        self._write()

    def add_round(self, record: dict[str, Any]) -> None:
        encoded = _encode(record)  # first: a record that cannot be written changes nothing
        # One unbuffered write of the whole line, so a kill leaves it whole or cut off at its
        # end. Not flushed to disk: the checkpoint's flush is the round's (server/recorder.py).
        with self.rounds_path.open("ab", buffering=0) as out:
            out.write(encoded + b"\n")
        self._rounds += b"," + encoded if self._rounds else encoded
        if self._clock() - self._written_at >= self._rewrite_seconds:
            self._write()

    def fail(self, reason: str) -> None:
        """Mark the run failed; from the fields last encoded, as the fault may be in `data`."""
        self.data = {**json.loads(self._head), "status": "failed", "failure": reason}
        try:
            self._head = _encode(self.data)
            self._write()
        except OSError as error:  # the disk may be the fault: the log still says why
            log.error("could not record the failure in %s: %s", self.path, error)

    def snapshot(self) -> dict[str, Any]:
        """The results as they stand, safe to read while the round loop updates them."""
        return json.loads(self.text)

    def _write(self) -> None:
        write_atomically(self.path, self.text)
        self._written_at = self._clock()
