"""What ran the comparison: the machine and the versions, so a reader can weigh the times."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


def _first_match(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, str]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "CPU": _first_match("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": str(os.cpu_count()),
        "memory": f"{memory:.1f} GiB",
        "system": platform.platform(),
    }


def java_version() -> str:
    try:
        shown = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "not found"
    lines = (shown.stderr or shown.stdout).splitlines()
    return lines[0] if lines else "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {
        "Python": platform.python_version(),
        **{name: _package(name) for name in ("numpy", "pandas", "scikit-learn", "pyspark")},
        "Java": java_version(),
        "fedstock commit": _commit(),
    }


def _commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        shown = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return shown.stdout.strip()
