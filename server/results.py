"""The run's record: a JSON file a script can read, rewritten atomically after every round."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class ResultsFile:
    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "rounds": [], "final": None}
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

    def snapshot(self) -> dict[str, Any]:
        """The results as last written, safe to read while the round loop updates them."""
        return json.loads(self.text)

    def _write(self) -> None:
        """Write beside the target and rename, so a reader never sees half a file."""
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(handle, "w") as out:
                # Compact on purpose: only then does json use its C encoder, and the file is
                # rewritten every round. `python -m server.summary FILE` shows it to a person.
                text = json.dumps(self.data, allow_nan=False)
                out.write(text + "\n")
            os.replace(temporary, self.path)
            self.text = text
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
