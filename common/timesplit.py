"""One calendar for the whole federation: the date cutoff of the time split, and time folds.

Forecasting tomorrow, a province that trains on a day another province tests on leaks the test
into the model. So the cutoff is agreed once for the federation: each province counts its
usable rows per calendar day (summed like the statistics, through the same privacy chain), the
server takes the quantile of the union's dates from the summed counts, and sends the cutoff
down. Test rows are those dated strictly after it, in every province.

Cross-validation inside the training span is by time too: the days from the union's first day
to the cutoff are cut into equal blocks; fold j validates on block j and trains on the days
outside it, less an embargo of days on either side, so no training day lies within the
embargo of a validation day.
"""

from __future__ import annotations

import numpy as np

# Day 0 of the calendar, before the first A-share trading day; it covers fifty years.
EPOCH = np.datetime64("1990-01-01", "D")
DAYS = 18_262
DAY = np.timedelta64(1, "D")
# The statistics task's config flag asking a province for its day counts, not its sums.
COUNTS = "day_counts"


def _days(dates: np.ndarray) -> np.ndarray:
    return np.asarray(dates).astype("datetime64[D]")


def day_counts(dates: np.ndarray) -> np.ndarray:
    """How many of `dates` fall on each day of the calendar; ValueError for a date off it."""
    days = (_days(dates) - EPOCH).astype(np.int64)
    if len(days) and (days.min() < 0 or days.max() >= DAYS):
        last = EPOCH + (DAYS - 1) * DAY
        raise ValueError(f"dates must lie between {EPOCH} and {last}, the federation's calendar")
    return np.bincount(days, minlength=DAYS).astype(np.float64)


def check_counts(counts: np.ndarray, rows: float) -> None:
    """ValueError unless `counts` is a calendar of non-negative whole counts adding up to `rows`."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (DAYS,) or not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"day counts must be {DAYS} non-negative numbers")
    if not np.allclose(counts, np.round(counts), atol=1e-6) or abs(counts.sum() - rows) > 1e-6:
        raise ValueError(f"day counts must be whole numbers adding up to the {rows:g} rows")


def iso(day: np.datetime64) -> str:
    return str(np.datetime64(day, "D"))


def agree(counts: np.ndarray, test_fraction: float) -> tuple[str, str]:
    """The union's first day and the cutoff, as ISO dates: the (1 − `test_fraction`) quantile
    of the union's row dates (linear between neighbouring rows, as pandas' quantile), down to
    its day. Test rows are those strictly after it: the same rows a single province's quantile
    of its own dates has always held out."""
    counts = np.round(np.asarray(counts, dtype=np.float64))
    used = np.flatnonzero(counts > 0)
    if len(used) < 2:
        raise ValueError("a time split needs rows on at least two days")
    position = (counts.sum() - 1) * (1.0 - test_fraction)
    ends = np.cumsum(counts)  # rows up to and including each day
    low, high = (
        int(np.searchsorted(ends, k, side="right")) for k in (np.floor(position), np.ceil(position))
    )
    day = int(np.floor(low + (high - low) * (position - np.floor(position))))
    day = min(day, int(used[-2]))  # never the last day: the test set would be empty
    return iso(EPOCH + int(used[0]) * DAY), iso(EPOCH + day * DAY)


def record(setting: str, test_fraction: float, seed: int, start: str, cutoff: str) -> dict:
    """The split as results.json states it: `kind` time (its first day and cutoff, ISO dates)
    or random (the paper setting's seeded 80/20)."""
    if setting != "next-day":
        return {"kind": "random", "test_fraction": test_fraction, "seed": seed}
    return {
        "kind": "time",
        "start": start,
        "cutoff": cutoff,
        "rule": f"test rows are dated strictly after the {1 - test_fraction:.0%} quantile of "
        "all provinces' next-day row dates, in every province",
    }


def is_test(dates: np.ndarray, cutoff: str) -> np.ndarray:
    """The rows dated strictly after the cutoff."""
    return _days(dates) > np.datetime64(cutoff, "D")


def time_fold(
    dates: np.ndarray, start: str, cutoff: str, folds: int, fold: int, embargo: int
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of fold `fold`: block `fold` of `folds` equal blocks of days
    from `start` to `cutoff` validates; training keeps the days more than `embargo` days from it."""
    if embargo < 0:
        raise ValueError(f"the embargo cannot be negative, got {embargo} days")
    first, last = np.datetime64(start, "D"), np.datetime64(cutoff, "D")
    span = int((last - first) / DAY) + 1
    if not 2 <= folds <= span:
        raise ValueError(f"cannot cut {span} days from {start} to {cutoff} into {folds} folds")
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} does not exist among {folds} folds")
    edges = first + (np.arange(folds + 1) * span // folds) * DAY
    days = _days(dates)
    held_out = (days >= edges[fold]) & (days < edges[fold + 1])
    near = (days >= edges[fold] - embargo * DAY) & (days < edges[fold + 1] + embargo * DAY)
    return ~near, held_out
