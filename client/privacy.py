"""What a province does to its update before it leaves: local differential privacy.

The server asks for it through the task config (`privacy`, `dp_clip`, `dp_noise_multiplier`);
the noise is drawn here, so the server never sees the update without it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.tensors import Arrays
from common.vectors import clip, delta, flatten, unflatten
from common.wire import ConfigScalar


def privatize(
    update: Arrays,
    reference: Arrays | None,
    config: Mapping[str, ConfigScalar],
    rng: np.random.Generator | None = None,
) -> Arrays:
    """Local DP: the step from `reference` clipped to `dp_clip`, plus N(0, (σ·clip)²) noise."""
    if config.get("privacy") != "dp-local":
        return update
    bound = float(config["dp_clip"])
    sigma = float(config["dp_noise_multiplier"])
    rng = rng or np.random.default_rng()
    step = clip(delta(update, reference), bound)
    noisy = step + rng.normal(0.0, sigma * bound, size=step.shape)
    base = 0.0 if reference is None else flatten(reference)
    return unflatten(base + noisy, update)
