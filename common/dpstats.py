"""Differential privacy on the statistics: n, Σz and Σzzᵀ of rows clipped to public bounds
(common/dpbounds.py), released with Gaussian noise scaled to what one row can move them by.

The unit of privacy is one training row. n is public: a province's row count travels in the
clear with every outcome it sends, so two neighbouring data sets differ by one row replaced
and have the same n. Each column is mapped onto the unit interval of its public range,
u = (z − centre) / width ∈ [−½, ½]; what is released is Σu and the upper triangle of Σuuᵀ
(diagonal included), an invertible linear map of (Σz, Σzzᵀ) once n and the bounds are known.
Replacing one row moves each Σu_i by at most 1, each Σu_i² by at most ¼ and each Σu_iu_j
(i ≠ j) by at most ½, so for d columns the released vector's L2 sensitivity is
Δ = √(d + d/16 + d(d − 1)/8).

The noise is N(0, (σΔ)²) on every released entry, σ being the run's noise multiplier in units
of sensitivity, so the release is one more Gaussian mechanism at σ for the run's accountant.
Post-processing of the federation's noised sum, which costs no ε, keeps it usable: the mean is
clamped into the bounds and the covariance's eigenvalues are floored at the noise's own size on
one covariance entry (σΔ√k/n for k releases summed) and capped at d/4, so Σzzᵀ stays symmetric
and [n, Σzᵀ; Σz, Σzzᵀ] positive definite.

A price target may be released as its move from today's close (common/dpbounds.py): the
province sums z' = [x, y − close], and the server maps the usable sums back with
z = Az', A the identity with a 1 where the target's row meets the close's column, so
Σz = AΣz' and Σzzᵀ = A(Σz'z'ᵀ)Aᵀ exactly. The map is public and invertible, so it is
post-processing too, and it keeps [n, Σzᵀ; Σz, Σzzᵀ] positive definite.

The time split's day counts (common/timesplit.py: rows per year, or per day of some years)
are released the same way: replacing one row takes one from one count and adds one to another,
an L2 sensitivity of √2, so each count gets N(0, (σ√2)²). Post-processing rounds the noised
sums. The years' (hundreds of rows each) are zeroed below `COUNT_FLOOR` times the sum's noise
deviation, which noise alone reaches on an empty year about once in 30 000, so the first year
is one with rows. The days' (a few rows each, fewer than the noise on small federations) are
left unclamped, negative ones too: their running sums, which the cutoff is read from
(common/timesplit.py), stay unbiased, where clamping each day at zero would add rows to
every empty day.
"""

from __future__ import annotations

import math

import numpy as np

from common import preprocess
from common.noise import SecureRandom
from common.tensors import Arrays


def clipped_statistics(
    x: np.ndarray, y: np.ndarray, lo: list[float], hi: list[float]
) -> dict[str, np.ndarray]:
    """n, Σz and Σzzᵀ with each row's columns clipped into [lo, hi]: no row is dropped."""
    return preprocess.statistics(np.clip(x, lo[:-1], hi[:-1]), np.clip(y, lo[-1], hi[-1]))


def from_move(sums: Arrays, close: int) -> dict[str, np.ndarray]:
    """n, Σz and Σzzᵀ of [x, price] from those of [x, price − close], close being column
    `close` of x: the price is its move plus today's close, row by row."""
    d = len(sums["sum"])
    into = np.eye(d)
    into[d - 1, close] = 1.0
    cross = into @ sums["cross"] @ into.T
    return {
        "count": np.asarray(sums["count"], dtype=np.float64),
        "sum": into @ sums["sum"],
        "cross": (cross + cross.T) / 2,
    }


def entry_sensitivity(d: int) -> tuple[np.ndarray, np.ndarray]:
    """What replacing one row can move each entry of Σu and of Σuuᵀ by, in the unit space."""
    cross = np.full((d, d), 0.5)
    np.fill_diagonal(cross, 0.25)
    return np.ones(d), cross


def sensitivity(d: int) -> float:
    """The L2 sensitivity Δ of the released vector: Σu and the upper triangle of Σuuᵀ."""
    total, cross = entry_sensitivity(d)
    return math.sqrt(float(np.sum(total**2) + np.sum(np.triu(cross) ** 2)))


def to_unit(sums: Arrays, lo: list[float], hi: list[float]) -> tuple[float, np.ndarray, np.ndarray]:
    """n, Σu and Σuuᵀ of the rows whose n, Σz and Σzzᵀ are `sums`, u = (z − centre) / width."""
    centre, width = np.add(lo, hi) / 2, np.subtract(hi, lo)
    n, total, cross = float(sums["count"]), sums["sum"], sums["cross"]
    shifted = (
        cross - np.outer(centre, total) - np.outer(total, centre) + n * np.outer(centre, centre)
    )
    return n, (total - n * centre) / width, shifted / np.outer(width, width)


def from_unit(
    n: float, total: np.ndarray, cross: np.ndarray, lo: list[float], hi: list[float]
) -> dict[str, np.ndarray]:
    """n, Σz and Σzzᵀ back from n, Σu and Σuuᵀ (`to_unit`'s inverse), Σzzᵀ symmetric."""
    centre, width = np.add(lo, hi) / 2, np.subtract(hi, lo)
    spread = width * total
    raw = (
        np.outer(width, width) * cross
        + np.outer(centre, spread)
        + np.outer(spread, centre)
        + n * np.outer(centre, centre)
    )
    return {
        "count": np.array(n, dtype=np.float64),
        "sum": spread + n * centre,
        "cross": (raw + raw.T) / 2,
    }


def release(
    total: np.ndarray, cross: np.ndarray, sigma: float, rng: np.random.Generator | SecureRandom
) -> tuple[np.ndarray, np.ndarray]:
    """Σu and Σuuᵀ with N(0, (σΔ)²) on Σu and on each entry of Σuuᵀ's upper triangle, the
    lower triangle its mirror."""
    d = len(total)
    scale = sigma * sensitivity(d)
    upper = np.triu(np.asarray(rng.normal(0.0, scale, (d, d))))
    noise = upper + np.triu(upper, 1).T
    return total + np.asarray(rng.normal(0.0, scale, d)), cross + noise


def usable(sums: Arrays, lo: list[float], hi: list[float], floor: float) -> dict[str, np.ndarray]:
    """Noised sums made usable, at no cost in ε: the mean clamped into the bounds, and the
    covariance (in the unit space) with its eigenvalues kept between `floor` and d/4, the
    most a covariance of d columns in [−½, ½] can hold; n as it was."""
    n, total, cross = to_unit(sums, lo, hi)
    mean = np.clip(total / n, -0.5, 0.5)
    covariance = cross / n - np.outer(mean, mean)
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    kept = (vectors * np.clip(values, floor, len(mean) / 4)) @ vectors.T
    return from_unit(n, n * mean, n * (kept + np.outer(mean, mean)), lo, hi)


def floor(sigma: float, d: int, n: float, releases: int = 1) -> float:
    """The noise's deviation on one covariance entry (unit space) of a sum of n rows that
    `releases` independent releases at σ each noised: the eigenvalue floor of `usable`."""
    return sigma * sensitivity(d) * math.sqrt(releases) / n


def noised(
    sums: Arrays,
    lo: list[float],
    hi: list[float],
    sigma: float,
    rng: np.random.Generator | SecureRandom | None = None,
) -> dict[str, np.ndarray]:
    """`sums` (n, Σz, Σzzᵀ of rows clipped to the bounds) released at noise multiplier σ: n as
    it was, Σz and Σzzᵀ noised in the unit space, Σzzᵀ symmetric. `usable` makes them usable."""
    n, total, cross = to_unit(sums, lo, hi)
    total, cross = release(total, cross, sigma, rng or SecureRandom())
    return from_unit(n, total, cross, lo, hi)


# Replacing one row moves two of a histogram's counts by one each.
COUNT_SENSITIVITY = math.sqrt(2.0)
# Counts below this many deviations of the sum's noise are taken for noise on an empty bin.
COUNT_FLOOR = 4.0


def noised_counts(
    counts: np.ndarray, sigma: float, rng: np.random.Generator | SecureRandom | None = None
) -> np.ndarray:
    """Day counts released at noise multiplier σ: N(0, (σ√2)²) on every count."""
    noise = np.asarray((rng or SecureRandom()).normal(0.0, sigma * COUNT_SENSITIVITY, counts.shape))
    return np.asarray(counts, dtype=np.float64) + noise


def count_spread(sigma: float, releases: int = 1) -> float:
    """The deviation of the noise on one count of a sum that `releases` independent releases at
    σ each noised (each province's under dp-local, the server's once under dp-central)."""
    return sigma * COUNT_SENSITIVITY * math.sqrt(releases)


def usable_years(total: np.ndarray, sigma: float, releases: int = 1) -> np.ndarray:
    """A noised sum of rows per year that `releases` independent releases at σ each noised,
    made whole and non-negative at no cost in ε: rounded, and zero below `COUNT_FLOOR`
    deviations."""
    spread = count_spread(sigma, releases)
    counts = np.round(np.asarray(total, dtype=np.float64))
    return np.where(counts < max(COUNT_FLOOR * spread, 1.0), 0.0, counts)
