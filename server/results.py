"""The run's record: a JSON file a script can read, and beside it the rounds log it is made from.

A long run has thousands of round records, so each is encoded once, when it is added, and
appended to the rounds log (`rounds.jsonl` beside the results, one record a line), which costs
the same at round 1,000 as at round 1; the server keeps no copy of them, so its memory does not
grow with the run. The results file, which does, is copied from the log in chunks, rewritten
whole at most once every `rewrite_seconds` (a second by default) and whenever a field other than
the rounds changes (the statistics, the final result), so it is never more than that behind. A
restarted run resumes its rounds from the log (`read_rounds`), up to the round its checkpoint
records."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from itertools import islice
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
# How much of the rounds log is read at a time when the results are put together.
COPY_BYTES = 1 << 20


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
        # How much of the rounds log holds whole records: a reader reads that far, so a round
        # being appended meanwhile is not half read.
        self._logged = 0
        self._count = 0  # the records in those bytes
        self._written_at = -float("inf")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rounds_path.write_bytes(b"")
        self._write()

    @property
    def head(self) -> bytes:
        """Every field but the rounds, as JSON: what a checkpoint carries of the results."""
        return self._head

    def _chunks(self) -> Iterator[bytes]:
        """The results as they stand, in pieces: the fields, then the logged rounds as a JSON
        list. Safe to read while the round loop adds to them."""
        yield self._head[:-1] + b', "rounds": ['
        remaining = self._logged
        with self.rounds_path.open("rb") as log:
            while remaining:
                chunk = log.read(min(COPY_BYTES, remaining))
                if not chunk:
                    raise OSError(f"{self.rounds_path} is shorter than the rounds written to it")
                remaining -= len(chunk)
                # Records are one a line: each newline becomes the list's comma, but the last.
                yield chunk.replace(b"\n", b",")[: -1 if not remaining else None]
        yield b"]}\n"

    def rounds(self) -> Iterator[dict[str, Any]]:
        """The round records logged so far, one at a time, oldest first."""
        with self.rounds_path.open("rb") as log:
            for line in islice(log, self._count):
                yield json.loads(line)

    @property
    def text(self) -> bytes:
        """The results as they stand, whole."""
        return b"".join(self._chunks())

    def update(self, **fields: Any) -> None:
        """Set top-level fields; `rounds` replaces the round records (a resumed run's), in the
        log as in the file."""
        rounds = fields.pop("rounds", None)
        self.data.update(fields)
        self._head = _encode(self.data)
        if rounds is not None:
            log = b"".join(_encode(r) + b"\n" for r in rounds)
            write_atomically(self.rounds_path, log)
            self._logged, self._count = len(log), len(rounds)
        self._write()

    def add_round(self, record: dict[str, Any]) -> None:
        encoded = _encode(record)  # first: a record that cannot be written changes nothing
        # One unbuffered write of the whole line, so a kill leaves it whole or cut off at its
        # end. Not flushed to disk: the checkpoint's flush is the round's (server/recorder.py).
        with self.rounds_path.open("ab", buffering=0) as out:
            out.write(encoded + b"\n")
        self._logged += len(encoded) + 1
        self._count += 1
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
        write_atomically(self.path, self._chunks())
        self._written_at = self._clock()
