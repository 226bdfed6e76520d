"""Smaller updates: a client's step from the global weights, quantized or sparsified.

The step is sent, not the weights: steps are small and centred on zero, so they survive 8 or
16 bits, and most of their mass sits in few coordinates. What the compression loses is kept on
the client and added to its next step (error feedback), so nothing is lost for good, only late.
"""

from __future__ import annotations

import math

import numpy as np

from common.protection import Compression
from common.tensors import Arrays
from common.vectors import flatten

METHODS = ("none", "float16", "int8", "topk")
VALUES, SCALE, INDICES = "compressed.values", "compressed.scale", "compressed.indices"


class CompressionError(ValueError):
    """Compressed arrays that do not describe a step of the expected size."""


def encode(step: np.ndarray, method: str, topk_fraction: float = 0.1) -> Arrays:
    """`step` (a flat float64 vector) as the arrays `method` sends."""
    if method == "float16":
        return {VALUES: step.astype(np.float16)}
    if method == "int8":
        peak = float(np.max(np.abs(step), initial=0.0))
        scale = peak / 127 if peak > 0 else 1.0
        return {VALUES: np.round(step / scale).astype(np.int8), SCALE: np.asarray(scale)}
    if method == "topk":
        keep = max(1, math.ceil(topk_fraction * len(step)))
        indices = np.sort(np.argpartition(np.abs(step), len(step) - keep)[-keep:])
        return {INDICES: indices.astype(np.int32), VALUES: step[indices].astype(np.float32)}
    raise ValueError(f"unknown compression {method!r}; expected one of: {', '.join(METHODS)}")


def decode(arrays: Arrays, method: str, size: int) -> np.ndarray:
    """The flat step of `size` values that `arrays` carry, after checking they can carry it."""
    expected = {"float16": {VALUES}, "int8": {VALUES, SCALE}, "topk": {VALUES, INDICES}}[method]
    if set(arrays) != expected:
        raise CompressionError(f"{method} updates carry tensors {sorted(expected)}")
    values = arrays[VALUES]
    wanted = {"float16": np.float16, "int8": np.int8, "topk": np.float32}[method]
    if values.dtype != wanted or values.ndim != 1:
        raise CompressionError(f"{VALUES!r} must be a vector of {np.dtype(wanted)}")
    if not np.isfinite(values).all():
        raise CompressionError(f"{VALUES!r} holds NaN or infinite values")
    if method == "float16":
        _check_size(values, size)
        return values.astype(np.float64)
    if method == "int8":
        _check_size(values, size)
        scale = arrays[SCALE]
        if scale.shape != () or scale.dtype != np.float64 or not 0 < scale < np.inf:
            raise CompressionError(f"{SCALE!r} must be one positive finite float64")
        return values.astype(np.float64) * float(scale)
    indices = arrays[INDICES]
    if indices.dtype != np.int32 or indices.shape != values.shape:
        raise CompressionError(f"{INDICES!r} must be int32, one per value")
    if len(indices) > size or np.any(indices < 0) or np.any(indices >= size):
        raise CompressionError(f"{INDICES!r} must index a step of {size} values")
    if np.any(np.diff(indices) <= 0):
        raise CompressionError(f"{INDICES!r} must be strictly increasing")
    step = np.zeros(size)
    step[indices] = values
    return step


def _check_size(values: np.ndarray, size: int) -> None:
    if len(values) != size:
        raise CompressionError(f"{VALUES!r} has {len(values)} values, the model {size}")


class ErrorFeedback:
    """A client's compressor: what one round's compression drops is added to the next step."""

    def __init__(self) -> None:
        self.residual: np.ndarray | None = None

    def encode(self, step: np.ndarray, method: str, topk_fraction: float = 0.1) -> Arrays:
        if self.residual is None or self.residual.shape != step.shape:
            self.residual = np.zeros_like(step)
        wanted = step + self.residual
        sent = encode(wanted, method, topk_fraction)
        self.residual = wanted - decode(sent, method, len(step))
        return sent

    def compress(
        self, update: Arrays, reference: Arrays | None, asked: Compression | None
    ) -> Arrays:
        """The update as the server's `compression` setting asks it to travel (None: as it is)."""
        if asked is None or asked.compression == "none" or reference is None:
            return update
        step = flatten(update) - flatten({name: reference[name] for name in update})
        return self.encode(step, asked.compression, asked.topk_fraction)
