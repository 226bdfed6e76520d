"""A deterministic synthetic A-share market: the embedded default when no real export is at hand.

Each province is generated from its own seed stream and its row count depends only on the total
(and on who the members are), so a client can make just its own province, quickly and
identically on every machine. The paper's nine provinces have the profiles below; any other
member of a `--members` federation gets a profile drawn from its name.
"""

import hashlib
from math import ceil
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from common.data.ashare import round_price
from common.data.schema import FLOAT_COLUMNS, ORACLE, RAW_COLUMNS, DataError
from common.members import PAPER, Members
from common.provinces import PROVINCES

CALENDAR = pd.bdate_range("2014-01-02", periods=1700).as_unit("ns")  # to mid-2020
PAPER_ROWS = 2_699_730  # the seed paper's JoinQuant data set, 2014–2020
# The embedded default market: what a client without --data synthesizes for its province.
DEFAULT_ROWS = 270_000
DEFAULT_SEED = 7
ROWS_PER_STOCK = 1600  # ~1,690 stocks at the paper's 2,699,730 rows
MIN_TOTAL_ROWS = 1_000  # the smallest province still gets two stocks of a few weeks each
MAX_TOTAL_ROWS = 10_000_000  # keeps each province within its 2,000 codes
# Each member's codes are a block of 1,000 Shenzhen and 1,000 Shanghai numbers in six digits.
MAX_MEMBERS = 400
ST_SHARE, PAUSED_SHARE, MISSING_SHARE = 0.05, 0.01, 0.001
MEAN_REVERSION = 0.001  # daily pull of log price toward the stock's level: keeps prices sane
# The weak structure real daily bars have (docs/market.md states and calibrates it).
OWN_MOMENTUM = 0.08  # tomorrow's drift follows today's log return a little ...
VWAP_REVERSAL = 0.25  # ... and leans against the close's excess over the day's average price
MARKET_MOMENTUM = 0.04  # the market factor's return continues a little into the next day
SECTOR_MOMENTUM = 0.05  # so does each sector factor's
SECTORS, SECTOR_VOLATILITY = 8, 0.008  # industries shared by every province
GARCH_ARCH, GARCH_PERSISTENCE = 0.08, 0.90  # σ²ₜ = (1 − a − b)·v + a·e²ₜ₋₁ + b·σ²ₜ₋₁
OWN_TAIL = 5  # degrees of freedom of a stock's own shocks (Student's t, scaled to variance 1)
MARKET_VOLATILITY, MARKET_DRIFT = 0.012, 0.0002
PATH_WEIGHT = 0.5  # log(average / previous close) = weight × the day's log return + noise
PATH_NOISE = 0.3  # that noise's deviation, in units of the stock's volatility that day


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


def profile(name: str) -> Profile:
    """A paper province's profile, or one drawn from the member's name: the same everywhere."""
    if name in PROFILES:
        return PROFILES[name]
    draw = np.random.default_rng(_name_entropy(name))
    return Profile(
        int(draw.integers(3, 13)), float(draw.uniform(6.0, 30.0)), float(draw.uniform(0.018, 0.032))
    )


def _name_entropy(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def province_rows(total_rows: int, members: Members = PAPER) -> dict[str, int]:
    """Rows per member, summing exactly to `total_rows` (largest-remainder rounding).

    A member's count depends only on the total and the members, so each client can compute its
    own.
    """
    if not MIN_TOTAL_ROWS <= total_rows <= MAX_TOTAL_ROWS:
        raise DataError(
            f"total rows must be between {MIN_TOTAL_ROWS:,} and {MAX_TOTAL_ROWS:,}, "
            f"got {total_rows:,}"
        )
    if len(members) > MAX_MEMBERS:
        raise DataError(
            f"the synthetic market deals rows to at most {MAX_MEMBERS} members, "
            f"not {len(members)}; give larger federations their own --data"
        )
    weights = np.array([profile(name).weight for name in members.names])
    rows, remainders = np.divmod(total_rows * weights, weights.sum())
    short = total_rows - int(rows.sum())
    rows[np.argsort(-remainders, kind="stable")[:short]] += 1
    return dict(zip(members.names, rows.tolist(), strict=True))


def synthesize(total_rows: int, seed: int, members: Members = PAPER) -> dict[str, pd.DataFrame]:
    """The whole market: every member's raw frame."""
    return {name: synthesize_province(name, total_rows, seed, members) for name in members.names}


def _placing(name: str, members: Members) -> tuple[list[int], int]:
    """The member's seed stream and its block of codes. A paper province keeps its own whatever
    the members, so the default market is the same in every federation; the others follow
    the paper's nine in the order the members file lists them."""
    if name in PROVINCES:
        return [PROVINCES.index(name)], PROVINCES.index(name)
    others = [n for n in members.names if n not in PROVINCES]
    return [len(PROVINCES) + 1, _name_entropy(name)], len(PROVINCES) + others.index(name)


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


class Moments(NamedTuple):
    """Returns drawn by `_ar_garch`, with what each day lets the next one be expected to be."""

    returns: np.ndarray
    next_mean: np.ndarray  # the expected return of the next day, given this one
    next_variance: np.ndarray  # the next day's variance, known this day (GARCH)


def _ar_garch(
    normals: np.ndarray, variance: np.ndarray, momentum: np.ndarray, drift: np.ndarray
) -> Moments:
    """AR(1) returns around `drift` with GARCH(1,1) volatility of long-run `variance`, per column,
    from `normals`: innovations of mean 0 and variance 1 (normal or scaled Student's t).

    Sequential in time, vectorised over the columns (factors or stocks).
    """
    returns, next_mean, next_variance = (np.empty(normals.shape) for _ in range(3))
    floor = (1 - GARCH_ARCH - GARCH_PERSISTENCE) * variance
    conditional = np.broadcast_to(variance, normals.shape[1:]).astype(np.float64)
    mean = np.broadcast_to(drift, normals.shape[1:]).astype(np.float64)
    for day, normal in enumerate(normals):
        shock = np.sqrt(conditional) * normal
        returns[day] = mean + shock
        conditional = floor + GARCH_ARCH * shock**2 + GARCH_PERSISTENCE * conditional
        mean = drift + momentum * (returns[day] - drift)
        next_mean[day], next_variance[day] = mean, conditional
    return Moments(returns, next_mean, next_variance)


def _factors(seed: int) -> Moments:
    """The market factor (column 0) and the sector factors, common to all provinces (stream
    number 9, after the provinces), over the whole calendar."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(PROVINCES)]))
    k = 1 + SECTORS
    variance = np.array([MARKET_VOLATILITY**2, *[SECTOR_VOLATILITY**2] * SECTORS])
    momentum = np.array([MARKET_MOMENTUM, *[SECTOR_MOMENTUM] * SECTORS])
    drift = np.array([MARKET_DRIFT, *[0.0] * SECTORS])
    return _ar_garch(rng.standard_normal((len(CALENDAR), k)), variance, momentum, drift)


def _limit(previous_close: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Today's limit price: yesterday's close moved by `rate`, in fen, never below 0.01."""
    return np.maximum(round_price(previous_close * (1 + rate)), 0.01)


class Walk(NamedTuple):
    """Each (day, stock)'s previous close, close, average price, and tomorrow's own expected
    log return (mean reversion and reversal, before the factors' part)."""

    previous_close: np.ndarray
    close: np.ndarray
    average: np.ndarray
    next_drift: np.ndarray


def _walk(
    reference: np.ndarray,
    level: np.ndarray,
    rate: np.ndarray,
    shocks: np.ndarray,
    noise: np.ndarray,
    trades: np.ndarray,
) -> Walk:
    """Closes within the day's limits, and average prices tied to the day's path.

    Sequential in time, as each day's limits and drift depend on yesterday; vectorised over
    stocks. Before listing and on suspended days the close stays at the previous one.
    """
    previous_close, close, average, next_drift = (np.empty(shocks.shape) for _ in range(4))
    previous = reference
    drift = -MEAN_REVERSION * np.log(previous / level)
    for day, shock in enumerate(shocks):
        previous_close[day] = previous
        moved = round_price(previous * np.exp(drift + shock))
        moved = np.clip(moved, _limit(previous, -rate), _limit(previous, rate))
        moved = np.where(trades[day], moved, previous)
        moved_log = np.log(moved / previous)
        average[day] = previous * np.exp(PATH_WEIGHT * moved_log + noise[day])
        above_average = np.where(trades[day], np.log(moved / average[day]), 0.0)
        close[day] = previous = moved
        drift = (
            -MEAN_REVERSION * np.log(previous / level)
            + OWN_MOMENTUM * moved_log
            - VWAP_REVERSAL * above_average
        )
        next_drift[day] = drift
    return Walk(previous_close, close, average, next_drift)


def synthesize_province(
    province: str, total_rows: int, seed: int, members: Members = PAPER
) -> pd.DataFrame:
    """One member's raw frame, sorted by code then date; depends only on the arguments.

    Stocks list on different days and all trade to the calendar's end, kept inside A-share daily
    price limits. Each day's log return is the stock's own drift (mean reversion to its level,
    a little momentum of its own move, reversal of the close's excess over the average price),
    its loadings on the market and its sector factor, and its own shock, every part with
    clustered (GARCH) volatility. The `oracle` column is the process's
    expectation of the next trading day's average price (docs/market.md).
    """
    try:
        province = members.check(province)
    except ValueError as error:
        raise DataError(str(error)) from None
    if seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")
    stream, index = _placing(province, members)
    shape_of = profile(province)
    rows = province_rows(total_rows, members)[province]
    rng = np.random.default_rng(np.random.SeedSequence([seed, *stream]))

    stocks = max(2, ceil(rows / ROWS_PER_STOCK))
    lengths = _series_lengths(rows, stocks, rng)
    days = int(lengths.max())  # the grid is the last `days` calendar days × stocks
    listed = np.arange(days)[:, None] >= (days - lengths)[None, :]
    shape = (days, stocks)

    level = shape_of.price * rng.lognormal(0, 0.5, stocks)
    volatility = shape_of.volatility * rng.lognormal(0, 0.25, stocks)
    beta = rng.uniform(0.5, 1.5, stocks)
    sector = 1 + rng.integers(0, SECTORS, stocks)  # its column among the factors
    loading = rng.uniform(0.5, 1.5, stocks)
    rate = np.where(rng.random(stocks) < ST_SHARE, 0.05, 0.10)
    fat = rng.standard_t(OWN_TAIL, shape) * np.sqrt((OWN_TAIL - 2) / OWN_TAIL)  # variance 1
    own = _ar_garch(fat, volatility**2, np.zeros(stocks), np.zeros(stocks))
    # Per (day, stock): the market's and its sector's return, expected return and variance.
    factors = _factors(seed)
    market = Moments(*(m[-days:, [0]] for m in factors))
    industry = Moments(*(m[-days:][:, sector] for m in factors))
    shocks = beta * market.returns + loading * industry.returns + own.returns
    paused = (rng.random(shape) < PAUSED_SHARE) & listed
    paused[days - lengths, np.arange(stocks)] = False  # listing day always trades
    own_today = np.sqrt(np.vstack([volatility**2, own.next_variance[:-1]]))
    noise = PATH_NOISE * own_today * rng.standard_normal(shape)

    reference = round_price(level * rng.lognormal(0, 0.2, stocks))  # the listing price
    walk = _walk(reference, level, rate, shocks, noise, listed & ~paused)
    previous_close, close = walk.previous_close, walk.close

    high_limit = _limit(previous_close, rate)
    low_limit = _limit(previous_close, -rate)
    average = np.clip(round_price(walk.average), low_limit, high_limit)
    gap = 0.3 * shocks + rng.normal(0, 0.4, shape) * own_today
    open_ = np.clip(round_price(previous_close * np.exp(gap)), low_limit, high_limit)
    wick = np.abs(rng.normal(0, 0.6, (2, *shape))) * own_today
    top, bottom = np.maximum(open_, close), np.minimum(open_, close)
    high = np.minimum(round_price(np.maximum(top, average) * (1 + wick[0])), high_limit)
    low = np.maximum(round_price(np.minimum(bottom, average) * (1 - wick[1])), low_limit)
    open_, high, low = (np.where(paused, close, prices) for prices in (open_, high, low))

    turnover = rng.lognormal(np.log(5e7), 1.0, stocks)  # typical yuan traded per day
    moves = np.abs(np.log(close / previous_close))
    lots = turnover / (100 * level) * rng.lognormal(0, 0.5, shape) * (1 + 10 * moves)
    volume = np.where(paused, 0.0, np.maximum(1, np.rint(lots)) * 100)
    money = np.round(volume * average, 2)
    expected = walk.next_drift + beta * market.next_mean + loading * industry.next_mean
    variance = beta**2 * market.next_variance + loading**2 * industry.next_variance
    oracle = _oracle(close, expected, variance + own.next_variance, own.next_variance)

    bars = (open_, close, high, low, volume, money, high_limit, low_limit)  # FLOAT_COLUMNS
    flat = {name: values.T[listed.T] for name, values in zip(FLOAT_COLUMNS, bars, strict=True)}
    missing = rng.random(rows) < MISSING_SHARE
    which = rng.integers(0, len(FLOAT_COLUMNS), rows)
    for number, name in enumerate(FLOAT_COLUMNS):
        flat[name][missing & (which == number)] = np.nan
    dates = np.broadcast_to(CALENDAR.values[-days:, None], shape)
    # Each stock's code repeated over its rows, taken in Arrow from the few distinct codes:
    # converting hundreds of thousands of Python strings costs a client's start tens of ms.
    stock_of_row = pa.array(np.repeat(np.arange(stocks), lengths))
    codes = pa.array(_codes(index, stocks).tolist()).take(stock_of_row)
    columns = {
        "date": dates.T[listed.T],
        "code": pd.array(codes, dtype="str"),
        **flat,
        "paused": paused.T[listed.T].astype(np.int8),
        ORACLE: oracle.T[listed.T],
    }
    return pd.DataFrame({name: columns[name] for name in (*RAW_COLUMNS, ORACLE)})


def _oracle(
    close: np.ndarray, expected: np.ndarray, variance: np.ndarray, own_variance: np.ndarray
) -> np.ndarray:
    """E[tomorrow's average price | everything the process knows today], for a day that trades.

    Tomorrow's log(average / close) = w·r + η, with r (close to) normal given today (`expected`
    from the drift and the factors' momentum, `variance` from the GARCH recursions) and η
    independent, of variance (PATH_NOISE · σ)² where σ² is `own_variance`: a lognormal mean.
    The Student's t tails of a stock's own shock change it only beyond second order; price
    limits, rounding to the fen and suspensions are left out.
    """
    log_mean = PATH_WEIGHT * expected + 0.5 * (
        PATH_WEIGHT**2 * variance + PATH_NOISE**2 * own_variance
    )
    return close * np.exp(log_mean)
