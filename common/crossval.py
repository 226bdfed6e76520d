"""k-fold cross-validation inside one province: folds of its own training rows, never shared.

The paper validates with 5 folds. In the federation each client cuts its own training rows into
the same number of folds; fold j of the federation is every client's fold j, so a federated
model is trained on the other folds of all clients and scored on fold j of all clients.
"""

from __future__ import annotations

import numpy as np

from common.preprocess import Split


def fold_labels(rows: int, folds: int, seed: int) -> np.ndarray:
    """A random fold for every row, the folds as equal as can be (as KFold with shuffling)."""
    labels = np.arange(rows) % folds
    np.random.default_rng(seed).shuffle(labels)
    return labels


def fold_split(data: Split, folds: int, fold: int, seed: int) -> Split:
    """Train on the training rows outside fold `fold`, test on the rows inside it."""
    if not 2 <= folds <= len(data.y_train):
        raise ValueError(
            f"cannot cut {len(data.y_train)} training rows into {folds} folds (need 2 or more)"
        )
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} does not exist among {folds} folds")
    held_out = fold_labels(len(data.y_train), folds, seed) == fold
    return Split(
        data.features,
        data.x_train[~held_out],
        data.y_train[~held_out],
        data.x_train[held_out],
        data.y_train[held_out],
        {name: column[~held_out] for name, column in data.reference_train.items()},
        {name: column[held_out] for name, column in data.reference_train.items()},
    )
