"""`python -m client.kernels`: compile every numba kernel a fit runs into numba's on-disk cache.

The image runs it at build, as the containers' user and into the cache folder they read
(NUMBA_CACHE_DIR), so a container's first fit loads the machine code instead of compiling it,
which costs seconds of CPU per kernel on a busy machine. The kernels are compiled for the types
the fits give them: the local SGD epoch (client/steps.py) and the histogram trees' passes
(common/models/histtree.py, the forest's descent among them).
"""

from __future__ import annotations

import sys

import numpy as np

from client.optim import LocalPlan
from client.steps import sgd
from common.models import histtree


def compile_all() -> None:
    """Each kernel once, on tiny inputs of the types the fits give them."""
    plan = LocalPlan(epochs=1, learning_rate=0.01, batch_size=1, mu=0.0, seed=0)
    # A client's features are read-only (a view of the loaded frame), numba types them apart
    # from a writable array, which others' code (a benchmark, a test) gives it.
    for writable in (False, True):
        x = np.zeros((1, 1))
        x.flags.writeable = writable
        sgd(x, np.zeros(1), np.zeros(2), plan)
    histtree.load_kernels()


if __name__ == "__main__":
    compile_all()
    print("numba kernels compiled into the cache", file=sys.stderr)
