"""Command-line conventions of the daemons: every flag may come from a FEDSTOCK_* variable.

Containers are configured by environment; people use flags. A flag's default is read from
the environment as text, so argparse converts and checks it exactly like a typed flag.
"""

from __future__ import annotations

import os


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"FEDSTOCK_{name}", default)


def env_flag(name: str) -> bool:
    """A switch set in the environment by any value but empty, 0 or false."""
    return (env(name) or "").lower() not in ("", "0", "false")


class ConfigError(ValueError):
    """A setting, or a combination of settings, that cannot work; the message names the flag."""
