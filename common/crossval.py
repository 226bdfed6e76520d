"""k-fold cross-validation inside one province: folds of its own training rows, never shared.

The paper validates with 5 folds. In the federation each client cuts its own training rows into
the same number of folds; fold j of the federation is every client's fold j, so a federated
model is trained on the other folds of all clients and scored on fold j of all clients.

In the paper setting the folds are random, as the paper's. Forecasting tomorrow they are blocks
of days, the same days in every province (common/timesplit.py), and the training rows of a fold
keep clear of its validation days by an embargo: a random fold would validate on days between
training days, which tomorrow's target and the rolling features straddle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common import timesplit
from common.preprocess import Split


@dataclass(frozen=True)
class TimeFolds:
    """Folds by date: blocks of days from the federation's first day to its cutoff, and the
    days kept clear on either side of the validation block."""

    start: str
    cutoff: str
    embargo: int


def fold_labels(rows: int, folds: int, seed: int) -> np.ndarray:
    """A random fold for every row, the folds as equal as can be (as KFold with shuffling)."""
    labels = np.arange(rows) % folds
    np.random.default_rng(seed).shuffle(labels)
    return labels


def fold_split(
    data: Split, folds: int, fold: int, seed: int, by_time: TimeFolds | None = None
) -> Split:
    """Train on the training rows outside fold `fold`, test on the rows inside it; by time, the
    training rows within the embargo of the fold's days are left out of both."""
    if not 2 <= folds <= len(data.y_train):
        raise ValueError(
            f"cannot cut {len(data.y_train)} training rows into {folds} folds (need 2 or more)"
        )
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} does not exist among {folds} folds")
    dates = data.dates_train
    if by_time is None:
        held_out = fold_labels(len(data.y_train), folds, seed) == fold
        kept = ~held_out
    else:
        kept, held_out = timesplit.time_fold(
            data.dates_train, by_time.start, by_time.cutoff, folds, fold, by_time.embargo
        )
    return Split(
        data.features,
        data.x_train[kept],
        data.y_train[kept],
        data.x_train[held_out],
        data.y_train[held_out],
        {name: column[kept] for name, column in data.reference_train.items()},
        {name: column[held_out] for name, column in data.reference_train.items()},
        dates[kept] if len(dates) else dates,  # a split made without its dates has none
        dates[held_out] if len(dates) else dates,
    )
