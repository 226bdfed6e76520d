"""The run's record: a JSON file a script can read, rewritten atomically after every round.

A long run keeps thousands of round records, so each is encoded once, when it is added, and kept
only as those bytes; the file is put together from them. A round then costs no more encoding at
round 1,000 than at round 1, and the server holds its history in the size of the file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from common.files import write_atomically

log = logging.getLogger("fedstock.server")

# Which layout of the results a reader is looking at; raised when a field changes meaning or
# goes away (fields are only ever added within one version).
SCHEMA_VERSION = 1


def _encode(value: Any) -> bytes:
    # Compact on purpose: only then does json use its C encoder. `python -m server.summary FILE`
    # shows the file to a person.
    return json.dumps(value, allow_nan=False).encode()


class ResultsFile:
    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        # Everything but the rounds, which are in `_rounds`.
        self.data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **header, "final": None}
        # The round records as a JSON list without its brackets: grows by one record a round.
        self._rounds = bytearray()
        # The file's content as last written: a whole record other threads may read at any time.
        self.text = b""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def update(self, **fields: Any) -> None:
        """Set top-level fields; `rounds` replaces the round records (a resumed run's)."""
        if "rounds" in fields:
            self._rounds = bytearray(b",".join(_encode(r) for r in fields.pop("rounds")))
        self.data.update(fields)
        self._write()

    def add_round(self, record: dict[str, Any]) -> None:
        encoded = _encode(record)  # first: a record that cannot be written changes nothing
        self._rounds += b"," + encoded if self._rounds else encoded
        self._write()

    def fail(self, reason: str) -> None:
        """Mark the run failed; from the last record written, as the fault may be in `data`."""
        self.data = {**json.loads(self.text), "status": "failed", "failure": reason}
        self._rounds = bytearray(b",".join(_encode(r) for r in self.data.pop("rounds")))
        try:
            self._write()
        except OSError as error:  # the disk may be the fault: the log still says why
            log.error("could not record the failure in %s: %s", self.path, error)

    def snapshot(self) -> dict[str, Any]:
        """The results as last written, safe to read while the round loop updates them."""
        return json.loads(self.text)

    def _write(self) -> None:
        rest = _encode(self.data)
        text = b"".join((rest[:-1], b', "rounds": [', self._rounds, b"]}\n"))
        write_atomically(self.path, text)
        self.text = text
