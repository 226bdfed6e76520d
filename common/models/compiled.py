"""The trees' numeric kernels, compiled by numba once a process.

numba costs a process a few tenths of a second to import, so it is imported by a kernel's first
call only; `cache=True` keeps the machine code beside the kernel's own module, so later
processes read it instead of compiling (the image compiles them at build: client/kernels.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache


@cache
def compiled(kernel: Callable[..., None]) -> Callable[..., None]:
    """`kernel` compiled (or read from numba's cache), the same object every call."""
    import numba

    return numba.njit(cache=True)(kernel)
