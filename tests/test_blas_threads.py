"""A province process does its linear algebra on one thread unless its environment asks for
more (client/__main__.py), checked in a fresh interpreter: OpenBLAS reads its variables once,
when it loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from client.__main__ import BLAS_THREAD_VARIABLES

PROBE = (
    "import numpy\n"
    "from threadpoolctl import threadpool_info\n"
    "from client.__main__ import one_blas_thread\n"
    "def threads():\n"
    "    return sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'})\n"
    "before = threads()\n"
    "one_blas_thread()\n"
    "print(before, threads())"
)


def blas_threads(**variables: str) -> tuple[str, str]:
    """BLAS's thread counts before and after `one_blas_thread`, with `variables` set."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={**env, **variables},
    )
    before, _, after = done.stdout.strip().splitlines()[-1].partition("] ")
    return before + "]", after


def test_a_province_keeps_blas_on_one_thread() -> None:
    assert blas_threads()[1] == "[1]"


@pytest.mark.parametrize("variable", BLAS_THREAD_VARIABLES)
def test_a_thread_count_the_environment_sets_is_kept(variable: str) -> None:
    before, after = blas_threads(**{variable: "2"})
    assert after == before
