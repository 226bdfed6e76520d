"""Checks that arrays from the wire are what a model expects, before anyone uses them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.tensors import Arrays


class UpdateError(ValueError):
    """Arrays that do not fit the model: wrong names, dtype or shape, or non-finite values."""


def check_arrays(arrays: Arrays, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Exactly the expected float64 tensors, each of its expected shape, all values finite."""
    if set(arrays) != set(expected):
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        raise UpdateError(
            f"expected tensors {sorted(expected)}; missing {missing}, unexpected {extra}"
        )
    for name, shape in expected.items():
        array = arrays[name]
        if array.dtype != np.float64:
            raise UpdateError(f"tensor {name!r} has dtype {array.dtype}, expected float64")
        if array.shape != shape:
            raise UpdateError(f"tensor {name!r} has shape {array.shape}, expected {shape}")
        if not np.isfinite(array).all():
            raise UpdateError(f"tensor {name!r} holds NaN or infinite values")
