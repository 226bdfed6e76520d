"""Every number a province sends, checked against what the server already knows.

A number can be finite and still a lie that breaks the run: an MSE of 1.7e308 overflows the
weighted mean, a count of 2**63 outweighs every honest province, statistics of 1e300 rows
poison the global scaler. What the server knows bounds what it can believe: the rows a client
declared at Join, the training rows its statistics reported, the plausible range of each
column. Anything outside is refused (UpdateError) and the province is dropped from that task,
exactly as if it had not answered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from common.models.checks import UpdateError
from common.tensors import Arrays

# Rows one province may declare at Join: far above any market's history (the paper's whole
# market is 2.7 million rows), far below what would overflow a weighted sum of bounded metrics.
MAX_ROWS = 10**10

# Plausible bounds of each column of z = [features, target], in the units the data holds.
# Adjusted A-share prices can be negative; no share has traded near a million yuan.
PRICE = (-1e6, 1e6)
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "close": PRICE,
    "high": PRICE,
    "low": PRICE,
    "high_limit": PRICE,
    "low_limit": PRICE,
    "price": PRICE,
    "target": PRICE,
    "volume": (0.0, 1e13),  # shares traded in a day
    "money": (0.0, 1e15),  # yuan traded in a day
}
# A prediction inside the target's plausible range misses by at most its width.
MAX_MSE = (PRICE[1] - PRICE[0]) ** 2
# Any other metric (seconds, local steps, losses in standardised units) stays below this.
MAX_METRIC = 1e15


def check_rows(rows: int) -> None:
    """The rows a province declares at Join bound every count it reports later."""
    if rows > MAX_ROWS:
        raise UpdateError(f"a province may declare at most {MAX_ROWS:g} rows, not {rows}")


def check_outcome(num_examples: int, metrics: Mapping[str, float], declared_rows: int) -> None:
    """Counts within the rows declared at Join; metrics finite, MSEs in [0, MAX_MSE]."""
    if not 1 <= num_examples <= declared_rows:
        raise UpdateError(
            f"num_examples {num_examples} is outside 1 to the {declared_rows} rows declared at Join"
        )
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise UpdateError(f"metric {name!r} is not finite")
        low, high = (0.0, MAX_MSE) if "mse" in name else (-MAX_METRIC, MAX_METRIC)
        if not low <= value <= high:
            raise UpdateError(f"metric {name!r} = {value:g} is outside [{low:g}, {high:g}]")


def check_train_count(num_examples: int, train_rows: int | None) -> None:
    """A training outcome covers at most the training rows the province's statistics reported."""
    if train_rows is not None and num_examples > train_rows:
        raise UpdateError(
            f"num_examples {num_examples} exceeds the {train_rows} training rows of your statistics"
        )


def check_declared_count(
    arrays: Arrays, num_examples: int, what: str, least: int | None = None
) -> None:
    """The row count `n` among `what`'s sums is the num_examples the province declared beside
    them (and at least `least`): sums of other rows than those it counts are a lie."""
    count = float(arrays["count"])
    if count != num_examples or (least is not None and count < least):
        floor = f" and be at least {least}" if least is not None else ""
        raise UpdateError(f"{what} count {count:g} must equal num_examples ({num_examples}){floor}")


def check_statistics(arrays: Arrays, num_examples: int, columns: list[str]) -> None:
    """Sums that some real rows could have produced: n = num_examples ≥ 2, means and second
    moments within each column's plausible range, and [[n, Σzᵀ], [Σz, Σzzᵀ]] (a sum of
    [1, z][1, z]ᵀ) symmetric and positive semi-definite."""
    check_declared_count(arrays, num_examples, "statistics", least=2)
    count = float(arrays["count"])
    total, cross = arrays["sum"], arrays["cross"]
    bounds = np.array([PLAUSIBLE.get(c, (-MAX_METRIC, MAX_METRIC)) for c in columns])
    mean = total / count
    outside = [c for c, m, (lo, hi) in zip(columns, mean, bounds, strict=True) if not lo <= m <= hi]
    if outside:
        raise UpdateError(f"statistics give implausible means for {outside}")
    square = np.diag(cross) / count
    ceiling = np.max(bounds**2, axis=1)
    outside = [c for c, s, top in zip(columns, square, ceiling, strict=True) if not 0 <= s <= top]
    if outside:
        raise UpdateError(f"statistics give implausible second moments for {outside}")
    moments = np.block([[np.array([[count]]), total[None, :]], [total[:, None], cross]])
    if not np.allclose(moments, moments.T, rtol=1e-9, atol=0.0):
        raise UpdateError("statistics' Σzzᵀ is not symmetric")
    # Scaled to unit diagonal, rounding errors are relative: a true sum of outer products has
    # no eigenvalue below about -1e-12 however large its columns.
    norm = np.sqrt(np.where(np.diag(moments) > 0, np.diag(moments), 1.0))
    if np.linalg.eigvalsh(moments / np.outer(norm, norm))[0] < -1e-8:
        raise UpdateError("statistics' [n, Σz; Σz, Σzzᵀ] is not positive semi-definite")
