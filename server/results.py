"""The run's record: a JSON file a script can read, rewritten atomically after every round."""

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


class ResultsFile:
    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            **header,
            "rounds": [],
            "final": None,
        }
        # The file's text as last written: a whole record other threads may read at any time.
        self.text = ""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self._write()

    def add_round(self, record: dict[str, Any]) -> None:
        self.data["rounds"].append(record)
        self._write()

    def fail(self, reason: str) -> None:
        """Mark the run failed; from the last record written, as the fault may be in `data`."""
        self.data = {**json.loads(self.text), "status": "failed", "failure": reason}
        try:
            self._write()
        except OSError as error:  # the disk may be the fault: the log still says why
            log.error("could not record the failure in %s: %s", self.path, error)

    def snapshot(self) -> dict[str, Any]:
        """The results as last written, safe to read while the round loop updates them."""
        return json.loads(self.text)

    def _write(self) -> None:
        # Compact on purpose: only then does json use its C encoder, and the file is
        # rewritten every round. `python -m server.summary FILE` shows it to a person.
        text = json.dumps(self.data, allow_nan=False)
        write_atomically(self.path, text + "\n")
        self.text = text
