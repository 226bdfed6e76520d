"""Text that came from a participant, cut to a size that fits any log line or gRPC trailer.

A client can put a megabyte into a tensor name or an error message; whatever of it the server
repeats (a refusal, a log line, the results, the ledger) is escaped and truncated here first.
"""

from __future__ import annotations

# gRPC's default metadata limit is 8 KiB; a refusal must fit with room to spare.
REASON_CHARS = 512


def bounded(text: object, limit: int = REASON_CHARS) -> str:
    """`text` with control characters escaped, cut to at most `limit` characters."""
    escaped = str(text).encode("unicode_escape", "backslashreplace").decode("ascii")
    if len(escaped) <= limit:
        return escaped
    kept = limit - 40  # room for the note below, whatever the count
    return f"{escaped[:kept]}... [{len(escaped) - kept} more characters]"
