"""A deterministic synthetic A-share market: the embedded default when no real export is at hand.

Each province is generated from its own seed stream and its row count depends only on the total,
so a client can make just its own province, quickly and identically on every machine.
"""

from math import ceil
from typing import NamedTuple

import numpy as np
import pandas as pd

from common.data.ashare import round_price
from common.data.schema import FLOAT_COLUMNS, RAW_COLUMNS, DataError
from common.provinces import PROVINCES, check_province

CALENDAR = pd.bdate_range("2014-01-02", periods=1700).as_unit("ns")  # to mid-2020
PAPER_ROWS = 2_699_730  # the seed paper's JoinQuant data set, 2014–2020
# The embedded default market: what a client without --data synthesizes for its province.
DEFAULT_ROWS = 270_000
DEFAULT_SEED = 7
ROWS_PER_STOCK = 1600  # ~1,690 stocks at the paper's 2,699,730 rows
MIN_TOTAL_ROWS = 1_000  # the smallest province still gets two stocks of a few weeks each
MAX_TOTAL_ROWS = 10_000_000  # keeps each province within its 2,000 codes
ST_SHARE, PAUSED_SHARE, MISSING_SHARE = 0.05, 0.01, 0.001
MEAN_REVERSION = 0.004  # daily pull of log price toward the stock's level: keeps prices sane


class Profile(NamedTuple):
    weight: int  # share of all rows, in percent
    price: float  # typical price in yuan
    volatility: float  # typical daily volatility of a stock


# Non-IID on purpose: provinces differ in size, price level and volatility.
PROFILES: dict[str, Profile] = {
    "hubei": Profile(5, 8.0, 0.028),
    "fujian": Profile(6, 10.0, 0.025),
    "sichuan": Profile(6, 9.0, 0.030),
    "shandong": Profile(9, 11.0, 0.024),
    "beijing": Profile(11, 26.0, 0.021),
    "zhejiang": Profile(16, 14.0, 0.026),
    "jiangsu": Profile(15, 12.0, 0.025),
    "guangdong": Profile(20, 16.0, 0.027),
    "shanghai": Profile(12, 22.0, 0.020),
}


def province_rows(total_rows: int) -> dict[str, int]:
    """Rows per province, summing exactly to `total_rows` (largest-remainder rounding).

    A province's count depends only on the total, so each client can compute its own.
    """
    if not MIN_TOTAL_ROWS <= total_rows <= MAX_TOTAL_ROWS:
        raise DataError(
            f"total rows must be between {MIN_TOTAL_ROWS:,} and {MAX_TOTAL_ROWS:,}, "
            f"got {total_rows:,}"
        )
    weights = np.array([PROFILES[province].weight for province in PROVINCES])
    rows, remainders = np.divmod(total_rows * weights, weights.sum())
    short = total_rows - int(rows.sum())
    rows[np.argsort(-remainders, kind="stable")[:short]] += 1
    return dict(zip(PROVINCES, rows.tolist(), strict=True))


def synthesize(total_rows: int, seed: int) -> dict[str, pd.DataFrame]:
    """The whole market: every province's raw frame."""
    return {province: synthesize_province(province, total_rows, seed) for province in PROVINCES}


def _series_lengths(rows: int, stocks: int, rng: np.random.Generator) -> np.ndarray:
    """Unequal trading-day counts per stock that sum exactly to `rows`, none above the calendar."""
    mean = rows / stocks
    spread = min(mean / 2, len(CALENDAR) - mean)
    draws = rng.uniform(-1, 1, stocks)
    wanted = mean + spread / 2 * (draws - draws.mean())
    lengths = np.floor(wanted).astype(np.int64)
    lengths[np.argsort(lengths - wanted, kind="stable")[: rows - lengths.sum()]] += 1
    return lengths


def _codes(province_index: int, stocks: int) -> np.ndarray:
    """Sorted, federation-unique codes: a block of Shenzhen then Shanghai codes per province."""
    shenzhen = stocks // 2
    block = province_index * 1000
    return np.array(
        [f"{block + i + 1:06d}.XSHE" for i in range(shenzhen)]
        + [f"{600000 + block + i:06d}.XSHG" for i in range(stocks - shenzhen)]
    )


def _market_returns(seed: int) -> np.ndarray:
    """Daily market factor, common to all provinces (stream number 9, after the provinces)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(PROVINCES)]))
    return 0.0002 + 0.012 * rng.standard_t(4, len(CALENDAR)) / np.sqrt(2)


def _limit(previous_close: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Today's limit price: yesterday's close moved by `rate`, in fen, never below 0.01."""
    return np.maximum(round_price(previous_close * (1 + rate)), 0.01)


def _walk(
    reference: np.ndarray,
    level: np.ndarray,
    rate: np.ndarray,
    shocks: np.ndarray,
    trades: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Previous and own close per (day, stock), each close within the day's limits.

    Sequential in time, as each day's limits depend on yesterday's close; vectorised over stocks.
    Before listing and on suspended days the close stays at the previous one.
    """
    previous_close, close = np.empty(shocks.shape), np.empty(shocks.shape)
    previous = reference
    for day, shock in enumerate(shocks):
        previous_close[day] = previous
        drift = -MEAN_REVERSION * np.log(previous / level)
        moved = round_price(previous * np.exp(drift + shock))
        moved = np.clip(moved, _limit(previous, -rate), _limit(previous, rate))
        close[day] = previous = np.where(trades[day], moved, previous)
    return previous_close, close


def synthesize_province(province: str, total_rows: int, seed: int) -> pd.DataFrame:
    """One province's raw frame, sorted by code then date; depends only on the three arguments.

    Stocks are random walks (market factor plus fat-tailed own moves) that list on different
    days and all trade to the calendar's end, kept inside A-share daily price limits.
    """
    try:
        province = check_province(province)
    except ValueError as error:
        raise DataError(str(error)) from None
    if seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")
    index = PROVINCES.index(province)
    profile = PROFILES[province]
    rows = province_rows(total_rows)[province]
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))

    stocks = max(2, ceil(rows / ROWS_PER_STOCK))
    lengths = _series_lengths(rows, stocks, rng)
    days = int(lengths.max())  # the grid is the last `days` calendar days × stocks
    listed = np.arange(days)[:, None] >= (days - lengths)[None, :]
    shape = (days, stocks)

    level = profile.price * rng.lognormal(0, 0.5, stocks)
    volatility = profile.volatility * rng.lognormal(0, 0.25, stocks)
    beta = rng.uniform(0.5, 1.5, stocks)
    rate = np.where(rng.random(stocks) < ST_SHARE, 0.05, 0.10)
    own = rng.standard_t(4, shape) / np.sqrt(2) * volatility
    shocks = beta * _market_returns(seed)[-days:, None] + own
    paused = (rng.random(shape) < PAUSED_SHARE) & listed
    paused[days - lengths, np.arange(stocks)] = False  # listing day always trades

    reference = round_price(level * rng.lognormal(0, 0.2, stocks))  # the listing price
    previous_close, close = _walk(reference, level, rate, shocks, listed & ~paused)

    high_limit = _limit(previous_close, rate)
    low_limit = _limit(previous_close, -rate)
    gap = 0.3 * shocks + rng.normal(0, 0.4, shape) * volatility
    open_ = np.clip(round_price(previous_close * np.exp(gap)), low_limit, high_limit)
    wick = np.abs(rng.normal(0, 0.6, (2, *shape))) * volatility
    high = np.minimum(round_price(np.maximum(open_, close) * (1 + wick[0])), high_limit)
    low = np.maximum(round_price(np.minimum(open_, close) * (1 - wick[1])), low_limit)
    open_, high, low = (np.where(paused, close, prices) for prices in (open_, high, low))

    turnover = rng.lognormal(np.log(5e7), 1.0, stocks)  # typical yuan traded per day
    lots = turnover / (100 * level) * rng.lognormal(0, 0.5, shape) * (1 + 10 * np.abs(shocks))
    volume = np.where(paused, 0.0, np.maximum(1, np.rint(lots)) * 100)
    average = low + (high - low) * rng.uniform(0.25, 0.75, shape)
    money = np.round(volume * average, 2)

    bars = (open_, close, high, low, volume, money, high_limit, low_limit)  # FLOAT_COLUMNS
    flat = {name: values.T[listed.T] for name, values in zip(FLOAT_COLUMNS, bars, strict=True)}
    missing = rng.random(rows) < MISSING_SHARE
    which = rng.integers(0, len(FLOAT_COLUMNS), rows)
    for number, name in enumerate(FLOAT_COLUMNS):
        flat[name][missing & (which == number)] = np.nan
    dates = np.broadcast_to(CALENDAR.values[-days:, None], shape)
    frame = pd.DataFrame(
        {
            "date": dates.T[listed.T],
            "code": pd.array(np.repeat(_codes(index, stocks), lengths), dtype="str"),
            **flat,
            "paused": paused.T[listed.T].astype(np.int8),
        }
    )
    return frame[list(RAW_COLUMNS)]
