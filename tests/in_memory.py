"""A whole federation in this process: `python -m server`'s run over the in-memory channel.

The server side is the real one (flags, strategy, loop, results, ledger, checkpoint); the nine
provinces are their LocalWork, called directly with every task (server/memory.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from client.local import LocalWork
from common.data import synthesize_province
from common.provinces import PROVINCES
from server.__main__ import federate, results_file
from server.cli import parse_args
from server.memory import MemoryChannel, Seconds, one_second

ROWS, SEED = 20_000, 3


def provinces(rows: int = ROWS, seed: int = SEED) -> dict[str, LocalWork]:
    return {p: LocalWork(synthesize_province(p, rows, seed)) for p in PROVINCES}


def channel(seconds: Seconds = one_second, rows: int = ROWS) -> MemoryChannel:
    return MemoryChannel(provinces(rows), seconds)


def run(out: Path, *flags: str, over: MemoryChannel | None = None) -> dict[str, Any]:
    """Run the server's flags over `over` (nine fresh provinces by default); the results."""
    config = parse_args(["--insecure", "--results", str(out / "results.json"), *flags])
    federate(config, over or channel(), results_file(config))
    return json.loads((out / "results.json").read_text())
