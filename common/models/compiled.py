"""The trees' numeric kernels, machine code either built ahead of time or compiled by numba.

A process that loads a kernel through numba pays about 0.5 s of CPU (numba's import, LLVM's
start, the cached code's link) before its first call; ten processes starting a federation at
once on two cores wait two seconds for it. So `python -m common.models.ahead` (run by `make`'s
set-up) builds every kernel declared here into one extension module, `fedstock_kernels`, which
loads like any other. A kernel's exported name carries a digest of its source, its signature and
numba's and numpy's versions, so a module built from other code is never used for this code.
Where the module or a kernel is missing, or an argument is not of the declared type, the kernel
is compiled by numba as before: the same numbers to the last bit. `cache=True` keeps numba's
machine code beside the kernel's own module, so later processes read it instead of compiling
(the image compiles them at build: client/kernels.py). FEDSTOCK_COMPILED_AHEAD=0 leaves the
built module unused.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

import numpy as np

MODULE = "fedstock_kernels"


def _numba_name(dtype: str) -> str:
    return "boolean" if dtype == "bool" else dtype  # numba's name for numpy's bool


@dataclass(frozen=True)
class Array:
    """A C-contiguous array argument of `dtype` and `ndim`; `written` ones must be writable."""

    dtype: str
    ndim: int
    written: bool = False

    def numba_type(self) -> str:
        return f"{_numba_name(self.dtype)}[{', '.join([':'] * (self.ndim - 1) + ['::1'])}]"

    def admits(self, value: object) -> bool:
        return (
            isinstance(value, np.ndarray)
            and value.dtype == np.dtype(self.dtype)
            and value.ndim == self.ndim
            and value.flags.c_contiguous
            and value.flags.aligned  # a received array may sit at any offset of its message
            and (value.flags.writeable or not self.written)
        )


@dataclass(frozen=True)
class Scalar:
    """A bool or float64 argument."""

    dtype: str

    def numba_type(self) -> str:
        return _numba_name(self.dtype)

    def admits(self, value: object) -> bool:
        if self.dtype == "bool":
            return isinstance(value, bool | np.bool_)
        return isinstance(value, float | np.float64)


Argument = Array | Scalar
DECLARED: list[Callable[..., None]] = []  # every kernel with declared types, in import order


def kernel(*arguments: Argument) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare a kernel's argument types, so it can be built ahead of time (the function is
    returned unchanged: `compiled` is what calls it)."""

    def declare(function: Callable[..., None]) -> Callable[..., None]:
        function.__kernel_arguments__ = arguments  # type: ignore[attr-defined]
        DECLARED.append(function)
        return function

    return declare


def signature(arguments: tuple[Argument, ...]) -> str:
    return f"void({', '.join(a.numba_type() for a in arguments)})"


def exported_name(function: Callable[..., None], arguments: tuple[Argument, ...]) -> str:
    """The kernel's name in the built module: its own and a digest of its source, its types
    and the numba and numpy it was built with (another numba may compile the same code apart)."""
    text = inspect.getsource(function) + signature(arguments) + _versions()
    return f"{function.__name__.lstrip('_')}_{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@cache
def compiled(function: Callable[..., None]) -> Callable[..., None]:
    """`function` as machine code, the same object every call: the built module's where it
    holds this very kernel, numba's otherwise."""
    arguments = getattr(function, "__kernel_arguments__", None)
    built = None
    if arguments is not None:
        try:
            built = getattr(_built(), exported_name(function, arguments), None)
        except OSError:  # no source to digest: numba's own compilation
            built = None
    if built is None:
        return _numba(function)

    def call(*values: Any) -> None:
        # The built code trusts its arguments' types (a wrong one is a crash, not an error).
        fits = len(values) == len(arguments)
        if fits and all(a.admits(v) for a, v in zip(arguments, values, strict=True)):
            built(*values)
        else:
            _numba(function)(*values)

    return call


@cache
def _versions() -> str:
    return f"numba {metadata.version('numba')} numpy {np.__version__}"


@cache
def _built() -> object | None:
    if os.environ.get("FEDSTOCK_COMPILED_AHEAD", "1") == "0":
        return None
    try:
        return importlib.import_module(MODULE)
    except ImportError:
        return None


@cache
def _numba(function: Callable[..., None]) -> Callable[..., None]:
    import numba

    return numba.njit(cache=True)(function)
