"""The analysis task's wire format, which server and client must agree on.

One ANALYSE task after the last round carries the global model and, for contributions, every
candidate model at once: each tensor of the K candidates stacked along a new first axis under
`candidates.<name>` (for an ensemble, a mask of its members). The client answers with MSEs
only, named by the helpers below.
"""

from __future__ import annotations

import numpy as np

from common.models.checks import UpdateError
from common.tensors import Arrays

CANDIDATES = "candidates."
# An ensemble's candidates are subsets of the global model's members: candidate k is the 0/1
# row k of `candidates.members`, one column per member in the global model's order.
MEMBERS = "members"

# Task-config keys: how many candidates follow, and what else to compute (0: nothing).
CANDIDATE_COUNT = "analysis_candidates"
IMPORTANCE_REPEATS = "importance_repeats"
PERSONALISE_EPOCHS = "personalise_epochs"
PERSONALISE_PULL = "personalise_pull"
ANALYSIS_SEED = "analysis_seed"

# Metrics every answer carries: the global model's test MSE, and that of predicting the
# federation's training mean of the target (the empty coalition's model).
GLOBAL_MSE = "global_mse"
MEAN_MSE = "mean_mse"
PERSONAL_MSE = "personal_mse"


def candidate_metric(index: int) -> str:
    return f"candidate.{index}"


def permuted_metric(feature: str, repeat: int) -> str:
    return f"permuted.{feature}.{repeat}"


def stack(candidates: list[Arrays]) -> Arrays:
    """K models with the same tensors as one set of tensors with a leading axis of K."""
    names = candidates[0].keys()
    return {CANDIDATES + name: np.stack([c[name] for c in candidates]) for name in names}


def unstack(arrays: Arrays, count: int) -> tuple[Arrays, list[Arrays]]:
    """The global model, and the `count` candidates stacked beside it."""
    model = {n: a for n, a in arrays.items() if not n.startswith(CANDIDATES)}
    stacked = {n.removeprefix(CANDIDATES): a for n, a in arrays.items() if n not in model}
    wrong = [n for n, a in stacked.items() if a.ndim == 0 or len(a) != count]
    if wrong or (count > 0) != bool(stacked):
        raise UpdateError(f"the task announces {count} candidate models; tensors {wrong} disagree")
    return model, [{n: a[k] for n, a in stacked.items()} for k in range(count)]
