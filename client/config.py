"""A province client's settings as one typed value that checks itself when it is made.

Flags and environment variables are mapped onto it in client/__main__.py; the daemon and the
province's work receive its values, never the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from client.links import TRANSPORTS
from common.cli import ConfigError
from common.members import PAPER, Members


@dataclass(frozen=True)
class ClientConfig:
    """Which province, where its rows and the server are, how long to wait, what to trust."""

    province: str
    server: str
    data: Path | None
    rows: int
    seed: int
    connect_timeout: float
    transfer_timeout: float
    max_model_mb: float
    tls_dir: Path
    insecure: bool
    he_key: Path | None
    slowdown: float
    receipts: Path
    he_insecure_key_size: bool = False
    members: Members = PAPER  # the federation's, from --members: who this client may be
    transport: str = "stream"

    def __post_init__(self) -> None:
        try:
            self.members.check(self.province)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.rows < 1:
            raise ConfigError("--rows must be positive")
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"--transport must be one of: {', '.join(TRANSPORTS)}")
        if not 1 <= self.slowdown < math.inf:
            raise ConfigError("--slowdown must be a finite factor of at least 1")

    @property
    def max_model_bytes(self) -> int:
        return int(self.max_model_mb * (1 << 20))
