"""One calendar for the whole federation: the date cutoff of the time split, and time folds.

Forecasting tomorrow, a province that trains on a day another province tests on leaks the test
into the model. So the cutoff is agreed once for the federation, from counts summed like the
statistics (through the same privacy chain): first each province's next-day rows per calendar
year, then, for the few years the cutoff and the first day fall in, its rows per day of those
years. From the sums the server takes the quantile of the union's dates (the rule a province
alone has always used) and sends the cutoff down; test rows are those dated strictly after it,
in every province. Two small uploads rather than one count per day of fifty years: under
homomorphic encryption each number is a ciphertext.

Under DP each count is noised once, so the running sum the cutoff is read from carries the noise
of every count before it, and that of the empty days after the last row can carry the cutoff
past every row. There the days are counted in bins of several days (`bin_width`: fewer counts,
so less noise summed, at a coarser resolution), and the cutoff is read linearly within its bin.

Cross-validation inside the training span is by time too: the days from the union's first day
to the cutoff are cut into equal blocks; fold j validates on block j and trains on the days
outside it, less an embargo of days on either side, so no training day lies within the
embargo of a validation day.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The calendar's fifty years, from before the first A-share trading day.
FIRST_YEAR, YEARS = 1990, 50
YEAR_DAYS = 366
DAY = np.timedelta64(1, "D")


def _days(dates: np.ndarray) -> np.ndarray:
    return np.asarray(dates).astype("datetime64[D]")


def _years(dates: np.ndarray) -> np.ndarray:
    return _days(dates).astype("datetime64[Y]").astype(np.int64) + 1970


def _new_year(year: int) -> np.datetime64:
    return np.datetime64(f"{year:04d}-01-01", "D")


def _year_days(year: int) -> int:
    return int((_new_year(year + 1) - _new_year(year)) / DAY)


def year_counts(dates: np.ndarray) -> np.ndarray:
    """How many of `dates` fall in each year of the calendar; ValueError for a date off it."""
    index = _years(dates) - FIRST_YEAR
    if len(index) and (index.min() < 0 or index.max() >= YEARS):
        last = FIRST_YEAR + YEARS - 1
        raise ValueError(f"dates must lie in {FIRST_YEAR}–{last}, the federation's calendar")
    return np.bincount(index, minlength=YEARS).astype(np.float64)


def bins(width: int) -> int:
    """How many bins of `width` days cover a year of the calendar (the last may be shorter)."""
    return -(-YEAR_DAYS // width)


def day_counts(dates: np.ndarray, years: Sequence[int], width: int = 1) -> np.ndarray:
    """How many of `dates` fall on each day of each of `years` (one row of 366 per year), or in
    each bin of `width` days from its first day."""
    days = _days(dates)
    counts = np.zeros((len(years), bins(width)))
    for row, year in enumerate(years):
        inside = days[_years(days) == year]
        offsets = ((inside - _new_year(year)) / DAY).astype(np.int64)
        counts[row] = np.bincount(offsets // width, minlength=bins(width))
    return counts


def bin_width(noise: float, years: np.ndarray, test_fraction: float) -> int:
    """The days each count of the days' question should cover, `noise` being the deviation of
    the noise on one count of the federation's sum: 1 in the clear. With noise, the cutoff read
    from R rows of its year errs by about noise·√(366/w) rows (the running sum's noise over
    366/w bins) plus R·w/366 (a bin's rows, read linearly within it); w = 366·(noise / 2R)^⅔
    makes the sum least. `years` are the rows per year, noised too (post-processing only)."""
    if noise <= 0:
        return 1
    years = np.round(np.asarray(years, dtype=np.float64))
    _, low, _ = _quantile_rows(years, test_fraction)
    rows = max(float(years[_year_holding(years, low)]), 1.0)
    return int(np.clip(round(YEAR_DAYS * (noise / (2 * rows)) ** (2 / 3)), 1, YEAR_DAYS))


def _per_day(counts: np.ndarray, width: int) -> np.ndarray:
    """Counts per bin of `width` days as counts per day, each bin's spread evenly on its days."""
    if counts.shape[-1] != bins(width):
        raise ValueError(f"{counts.shape[-1]} counts a year are not bins of {width} days")
    covered = np.diff(np.minimum(np.arange(counts.shape[-1] + 1) * width, YEAR_DAYS))
    return np.repeat(counts / covered, covered, axis=-1)


def check_counts(counts: np.ndarray, shape: tuple[int, ...], rows: float) -> None:
    """ValueError unless `counts` holds non-negative whole counts of `shape` adding up to
    `rows` (or to at most `rows`, for the days of some years)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != shape or not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"day counts must be non-negative numbers of shape {shape}")
    total = counts.sum()
    whole = np.allclose(counts, np.round(counts), atol=1e-6)
    if not whole or total - rows > 1e-6 or (len(shape) == 1 and abs(total - rows) > 1e-6):
        raise ValueError(f"day counts must be whole numbers adding up to the {rows:g} rows")


def _quantile_rows(years: np.ndarray, test_fraction: float) -> tuple[float, int, int]:
    """Where the (1 − test_fraction) quantile lies among the union's sorted rows, pandas' way:
    the position, and the rows just below and above it."""
    position = (years.sum() - 1) * (1.0 - test_fraction)
    return position, int(np.floor(position)), int(np.ceil(position))


def _year_holding(years: np.ndarray, k: int) -> int:
    """The index in the calendar of the year holding the union's row k (rows sorted by date)."""
    return int(np.searchsorted(np.cumsum(years), k, side="right"))


def years_asked(years: np.ndarray, test_fraction: float) -> list[int]:
    """The years whose days the cutoff needs: the union's first, and those of the two rows
    around the quantile."""
    years = np.round(np.asarray(years, dtype=np.float64))
    if years.sum() < 2:
        raise ValueError("a time split needs at least two rows")
    _, low, high = _quantile_rows(years, test_fraction)
    index = {int(np.flatnonzero(years)[0])}
    index |= {_year_holding(years, k) for k in (low, high)}
    return [FIRST_YEAR + i for i in sorted(index)]


def agree(
    years: np.ndarray,
    asked: Sequence[int],
    days: np.ndarray,
    test_fraction: float,
    width: int = 1,
) -> tuple[str, str]:
    """The union's first day and the cutoff, as ISO dates, from its rows per year and per day
    (or per bin of `width` days) of the `asked` years: the (1 − `test_fraction`) quantile of the
    union's row dates (linear between neighbouring rows, as pandas' quantile), down to its day."""
    years = np.round(np.asarray(years, dtype=np.float64))
    days = _per_day(np.round(np.asarray(days, dtype=np.float64)), width)
    before = np.concatenate([[0.0], np.cumsum(years)])  # rows before each year
    rows = {year: days[i] for i, year in enumerate(asked)}

    def day_of(k: int) -> np.datetime64:
        year = FIRST_YEAR + _year_holding(years, k)
        # Noised days (common/dpstats.py) may be negative: their running sum's running maximum
        # (the noise of empty days then cancels out; dropping the negative ones biased them up).
        running = np.cumsum(rows[year])
        within = np.maximum.accumulate(running)
        wanted, whole = k - before[year - FIRST_YEAR], years[year - FIRST_YEAR]
        if 0 < running[-1] != whole:
            # ... and need not add up to their year's count: the same share of their own sum,
            # so the cutoff falls among them (the year's last day put it past every row).
            wanted = wanted / whole * running[-1]
        day = int(np.searchsorted(within, wanted, "right"))
        return _new_year(year) + min(day, _year_days(year) - 1) * DAY

    position, low, high = _quantile_rows(years, test_fraction)
    first, second = day_of(low), day_of(high)
    cutoff = first + int(np.floor((second - first) / DAY * (position - low))) * DAY
    year = int(str(cutoff)[:4])
    within = rows.get(year, np.zeros(YEAR_DAYS))  # a year not asked for has no rows
    through = before[year - FIRST_YEAR] + within[: int((cutoff - _new_year(year)) / DAY) + 1].sum()
    if through >= years.sum():
        raise ValueError("no rows are dated after the time split's cutoff: too few days")
    start_year = FIRST_YEAR + int(np.flatnonzero(years)[0])
    first_days = np.flatnonzero(rows[start_year] > 0)  # noised: maybe none
    start = _new_year(start_year) + (int(first_days[0]) if len(first_days) else 0) * DAY
    return iso(start), iso(cutoff)


def agree_dates(dates: np.ndarray, test_fraction: float) -> tuple[str, str]:
    """`agree` on one set of dates (a province alone, or a baseline's union of provinces)."""
    years = year_counts(dates)
    asked = years_asked(years, test_fraction)
    return agree(years, asked, day_counts(dates, asked), test_fraction)


def iso(day: np.datetime64) -> str:
    return str(np.datetime64(day, "D"))


def record(
    setting: str, test_fraction: float, seed: int, start: str, cutoff: str, width: int = 1
) -> dict:
    """The split as results.json states it: `kind` time (its first day and cutoff, ISO dates,
    and `bin_days` where the days were counted in bins wider than one) or random (the paper
    setting's seeded 80/20)."""
    if setting != "next-day":
        return {"kind": "random", "test_fraction": test_fraction, "seed": seed}
    rule = (
        f"test rows are dated strictly after the {1 - test_fraction:.0%} quantile of "
        "all provinces' next-day row dates, in every province"
    )
    binned = {"bin_days": width} if width > 1 else {}
    return {"kind": "time", "start": start, "cutoff": cutoff, "rule": rule, **binned}


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
