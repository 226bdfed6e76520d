"""Gaussian noise from the operating system's cryptographically secure generator.

Differential privacy's guarantee assumes noise nobody can predict. numpy's default generator
(PCG64) is fast but not secure: whoever learns its state, or enough of its output, knows every
later draw and can subtract the noise. So each draw starts from `os.urandom`: 53 random bits
make a uniform number strictly inside (0, 1), and the normal quantile function turns it into a
standard normal draw. This does not defend against attacks on floating-point noise itself
(Mironov 2012); the noise is as exact as a double allows.
"""

from __future__ import annotations

import os

import numpy as np

_BITS = 53


class SecureRandom:
    """The one method of numpy's Generator the privacy mechanisms use, drawn from os.urandom."""

    def normal(
        self, loc: float = 0.0, scale: float = 1.0, size: int | tuple[int, ...] | None = None
    ) -> np.ndarray:
        count = int(np.prod(size)) if size is not None else 1
        words = np.frombuffer(os.urandom(8 * count), dtype="<u8") >> np.uint64(64 - _BITS)
        uniform = (words.astype(np.float64) + 0.5) / float(1 << _BITS)
        from scipy.special import ndtri  # SciPy is slow to import: only runs that draw noise do

        draws = loc + scale * ndtri(uniform)
        return draws.reshape(size) if size is not None else draws[0]
