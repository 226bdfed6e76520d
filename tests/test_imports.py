"""A program starts without the libraries only some models need: scikit-learn, SciPy and
dp-accounting are imported by the fit, the noise or the accountant that uses them, never by a
program's start (each costs a process tenths of a second before it can listen or join)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Each probe is a fresh interpreter, a process of its own: these run with the integration tests.
pytestmark = pytest.mark.integration

HEAVY = ("sklearn", "scipy", "dp_accounting")


def imported(code: str) -> set[str]:
    """The heavy libraries in sys.modules after running `code` in a fresh interpreter."""
    probe = (
        f"import sys, json\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("program", ["server.__main__", "client.__main__", "server.localrun"])
def test_a_program_starts_without_heavy_libraries(program: str) -> None:
    assert imported(f"import {program}") == set()


@pytest.mark.parametrize("program", ["server.__main__", "tests.bench_fold"])
def test_the_server_starts_without_pandas(program: str) -> None:
    """It reads no rows: its statistics, scores and checks are numpy over what clients send.
    The 10 MB bench's server role holds only that too, or its memory figures are not the
    server's."""
    probe = f"import sys, {program}\nprint('pandas' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-1] == "False"


def test_looking_a_model_up_imports_nothing_heavy() -> None:
    code = (
        "from common.registry import MODELS\n"
        "for spec in MODELS.values():\n"
        "    spec.strategy_factory(); spec.client_trainer()"
    )
    assert imported(code) == set()


def test_the_fit_that_needs_scikit_learn_imports_it() -> None:
    code = (
        "import numpy as np\n"
        "from common.models import linear\n"
        "linear.fit_weights(np.eye(3), np.arange(3.0))"
    )
    assert imported(code) == {"sklearn", "scipy"}
