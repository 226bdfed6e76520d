"""`python -m client.kernels` compiles every kernel a federation's fits run, for the types they
give them: after it, a real federation's processes (the server and nine clients, as the image's
containers run them) load every kernel from numba's cache and compile none. The image runs it at
build (Dockerfile); this checks it against a fresh cache folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("model", ["lr-sgd", "gbdt"])
def test_after_it_a_federation_compiles_no_kernel(tmp_path: Path, model: str) -> None:
    # As in the image, which has no kernels built ahead of time (common/models/ahead.py).
    env = {
        **os.environ,
        "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
        "NUMBA_DEBUG_CACHE": "1",
        "FEDSTOCK_COMPILED_AHEAD": "0",
    }
    subprocess.run(
        [sys.executable, "-m", "client.kernels"], cwd=ROOT, env=env, check=True, timeout=600
    )
    out = tmp_path / "run"
    run = [sys.executable, "-m", "server.localrun", "--model", model, "--rounds", "1"]
    subprocess.run(
        [*run, "--rows", "3000", "--out", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    logs = "".join(path.read_text() for path in out.glob("*.log"))
    assert "[cache] data loaded" in logs  # the debug output is there to read
    assert "[cache] data saved" not in logs, [
        line for line in logs.splitlines() if "data saved" in line
    ]
