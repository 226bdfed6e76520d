"""`python -m client.kernels`: compile every numba kernel a fit runs into numba's on-disk cache.

The image runs it at build, as the containers' user and into the cache folder they read
(NUMBA_CACHE_DIR), so a container's first fit loads the machine code instead of compiling it,
which costs seconds of CPU per kernel on a busy machine. The kernels are compiled for the types
the fits give them: the local SGD epoch (client/steps.py) and the histogram trees' passes
(common/models/histtree.py, the forest's descent among them).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from client.optim import LocalPlan
from client.steps import sgd
from common.models import histtree


def compile_all() -> None:
    """Each kernel once, on tiny inputs of the types the fits give them, through numba even
    where the trees' kernels were built ahead of time (the cache is what this fills)."""
    os.environ["FEDSTOCK_COMPILED_AHEAD"] = "0"
    plan = LocalPlan(epochs=1, learning_rate=0.01, batch_size=1, mu=0.0, seed=0)
    # A client's scaled features are read-only, and so is its target (the trainers keep it,
    # client/trainers.py) but in a fold's rows; numba types a read-only array apart from a
    # writable one, which others' code (a benchmark, a test) gives it.
    for x_writable, y_writable in ((False, False), (False, True), (True, True)):
        x, y = np.zeros((1, 1)), np.zeros(1)
        x.flags.writeable, y.flags.writeable = x_writable, y_writable
        sgd(x, y, np.zeros(2), plan)
    histtree.load_kernels()


if __name__ == "__main__":
    compile_all()
    print("numba kernels compiled into the cache", file=sys.stderr)
