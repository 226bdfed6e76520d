"""The server's settings as typed values, each checking itself when it is made.

Flags and environment variables are mapped onto these in server/cli.py; the domain modules
take these values and never see the command line. A setting that cannot work raises
ConfigError with a message naming the flag, so the command line can show it as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.preprocess import SETTINGS
from common.wire import ConfigScalar

MODES = ("sync", "async")


class ConfigError(ValueError):
    """A setting, or a combination of settings, that cannot work."""


@dataclass(frozen=True)
class RunSettings:
    """How many rounds, how many clients make a quorum, how long to wait, how rows are split."""

    rounds: int
    min_clients: int
    min_available: int
    round_timeout: float
    join_timeout: float
    setting: str
    test_fraction: float
    seed: int

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError("--rounds must be at least 1")
        if self.min_clients < 1:
            raise ConfigError("--min-clients must be at least 1")
        if self.min_available < self.min_clients:
            raise ConfigError("--min-available cannot be below --min-clients")
        if self.setting not in SETTINGS:
            raise ConfigError(
                f"--setting must be one of {', '.join(SETTINGS)}, got {self.setting!r}"
            )
        if not 0 < self.test_fraction < 1:
            raise ConfigError("--test-fraction must lie strictly between 0 and 1")

    def data_config(self) -> dict[str, ConfigScalar]:
        """What every client needs to prepare its rows the same way."""
        return {"setting": self.setting, "test_fraction": self.test_fraction, "seed": self.seed}


@dataclass(frozen=True)
class Buffering:
    """The asynchronous mode's settings: K, the staleness exponent a, the largest staleness."""

    size: int
    exponent: float
    max_staleness: int

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError("--buffer-size must be at least 1")
        if not 0 <= self.exponent < math.inf:
            raise ConfigError("--staleness-exponent must be a non-negative number")
        if self.max_staleness < 0:
            raise ConfigError("--max-staleness cannot be negative (0: no limit)")
