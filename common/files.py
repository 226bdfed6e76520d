"""Files a reader may open at any moment: written beside the target, then renamed over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomically(path: Path, text: str | bytes | Iterable[bytes]) -> None:
    """Write `text` (or its pieces, in order) to `path` so that a reader sees the old file or
    the new one, never half."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w" if isinstance(text, str) else "wb") as out:
            if isinstance(text, str | bytes):
                out.write(text)
            else:
                out.writelines(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
