"""Named arrays as one flat vector: privacy mechanisms bound and perturb the whole update at once.

Clipping must see every parameter together, or the norm bound (and so the privacy guarantee)
would hold per array only. Names are taken in sorted order so both ends flatten alike.
"""

from __future__ import annotations

import numpy as np

from common.tensors import Arrays


def flatten(arrays: Arrays) -> np.ndarray:
    return np.concatenate([np.ravel(arrays[name]) for name in sorted(arrays)]).astype(np.float64)


def unflatten(vector: np.ndarray, like: Arrays) -> Arrays:
    """`vector` cut back into arrays named and shaped as `like`."""
    arrays: Arrays = {}
    offset = 0
    for name in sorted(like):
        shape = np.shape(like[name])
        size = int(np.prod(shape))
        arrays[name] = vector[offset : offset + size].reshape(shape).copy()
        offset += size
    return arrays


def delta(update: Arrays, reference: Arrays | None) -> np.ndarray:
    """The update's step away from the global parameters (from zero when there are none yet)."""
    step = flatten(update)
    return step if reference is None else step - flatten(reference)


def clip_factor(norm: float, bound: float) -> float:
    """What a vector of L2 norm `norm` is multiplied by to be clipped to `bound`: never more
    than 1, so nothing is scaled up."""
    return 1.0 if norm <= bound else bound / norm


def clip(vector: np.ndarray, bound: float) -> np.ndarray:
    """`vector` scaled down, never up, to an L2 norm of at most `bound`."""
    factor = clip_factor(float(np.linalg.norm(vector)), bound)
    return vector if factor == 1.0 else vector * factor
