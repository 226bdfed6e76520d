"""From raw daily bars to model-ready arrays, the same way on every client.

Cleaning is local (each client drops its own bad rows). Scaling is global: a client only ever
shares sums over its rows (n, Σz, Σzzᵀ), from which the server derives the federation's mean,
variance and Pearson correlation, and every client then scales with the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from common import features as feature_sets
from common import forecast, quantity, timesplit

if TYPE_CHECKING:
    import pandas as pd  # frames come from the callers (client, baselines); the server has none

SETTINGS = ("next-day", "paper")
# The paper's seven features after its correlation analysis dropped the stock id.
PAPER_FEATURES = ["close", "high", "low", "high_limit", "low_limit", "volume", "money"]
# Forecasting tomorrow, today's average price is itself a feature.
NEXT_DAY_FEATURES = [*PAPER_FEATURES, "price"]
TARGET = "target"
# A column a synthetic market may carry: its own expectation of the next-day target. A score's
# yardstick, never an input: a feature list naming it is refused.
ORACLE = forecast.ORACLE


def features_for(setting: str, features: str = "paper") -> list[str]:
    """The columns a model reads in `setting` with the feature set `features` (common.features).

    The technical set forecasts tomorrow; the paper setting's same-day price has its own seven.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; expected one of: {', '.join(SETTINGS)}")
    if feature_sets.check_feature_set(features) == "technical":
        if setting != "next-day":
            raise ValueError("the technical features forecast tomorrow: use the next-day setting")
        return check_features(feature_sets.TECHNICAL_COLUMNS)
    return check_features(NEXT_DAY_FEATURES if setting == "next-day" else PAPER_FEATURES)


def check_features(features: list[str]) -> list[str]:
    """The features, refused if they name a column no model may read."""
    if ORACLE in features or TARGET in features:
        raise ValueError(
            f"a model may not read {ORACLE!r} or {TARGET!r}: they are what it is scored on"
        )
    return list(features)


@dataclass(frozen=True)
class Split:
    """One province's rows, ready for a model: unscaled features and the target, in the forecast
    quantity's units (common/quantity.py).

    Beside them, for scoring only, each row's naive forecasts and (on a market that knows it) the
    oracle's: `common.forecast` names them. No model reads these.
    """

    features: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    reference_train: dict[str, np.ndarray] = field(default_factory=dict)
    reference_test: dict[str, np.ndarray] = field(default_factory=dict)
    # Each row's date: the training rows' for folds by time (common/crossval.py).
    dates_train: np.ndarray = field(default_factory=lambda: np.empty(0, "datetime64[ns]"))
    dates_test: np.ndarray = field(default_factory=lambda: np.empty(0, "datetime64[ns]"))


def clean(raw: pd.DataFrame) -> pd.DataFrame:
    """Add `price = money / volume` and drop rows where any number is missing or infinite.

    Suspended days have no volume, so their price is undefined and they go too.
    """
    price = raw["money"] / raw["volume"]
    return raw.assign(price=price).loc[_usable(raw, price)].reset_index(drop=True)


def _usable(raw: pd.DataFrame, price: pd.Series) -> np.ndarray:
    """The rows `clean` keeps: every number and the price finite, and some volume traded."""
    numbers = np.isfinite(raw[PAPER_FEATURES].to_numpy(dtype=np.float64)).all(axis=1)
    return numbers & np.isfinite(price.to_numpy(dtype=np.float64)) & (raw["volume"].to_numpy() > 0)


def next_day_rows(raw: pd.DataFrame, features: str = "paper") -> pd.DataFrame:
    """The cleaned rows that have a tomorrow, by stock and date, with the next-day target (the
    stock's next cleaned row's price) and, for the technical set, its features."""
    frame = clean(raw).sort_values(["code", "date"], kind="stable")
    if features == "technical":
        frame = feature_sets.technical(frame)
    frame[TARGET] = frame.groupby("code", sort=False)["price"].shift(-1)
    return frame.dropna(subset=[TARGET])


def next_day_dates(raw: pd.DataFrame) -> np.ndarray:
    """The dates of the province's next-day rows, in their order: what its share of the
    federation's cutoff counts (common/timesplit.py).

    Every cleaned row has a price, so each stock's cleaned rows but its last have a tomorrow:
    the dates follow from the codes and dates alone, without the frame `next_day_rows` builds,
    which a client asking before its split would build twice.
    """
    price = raw["money"] / raw["volume"]
    rows = raw.loc[_usable(raw, price), ["code", "date"]]
    rows = rows.sort_values(["code", "date"], kind="stable")
    has_next = rows["code"].duplicated(keep="last") & rows["code"].notna()
    return rows.loc[has_next, "date"].to_numpy()


def split(
    raw: pd.DataFrame,
    setting: str = "next-day",
    test_fraction: float = 0.2,
    seed: int = 0,
    features: str = "paper",
    cutoff: str = "",
    forecast_quantity: str = quantity.DEFAULT,
) -> Split:
    """Targets and a train/test split for one province.

    next-day: the target is the stock's price on its next trading day, and the split is by time:
    the test rows are those dated strictly after `cutoff` (ISO date), the federation's agreed
    one (common/timesplit.py); without it, the province's own, by the same rule (the last
    `test_fraction` of its dates). Train on the past, test on the future.
    paper: the target is the same day's price with a random split, as the seed paper did.

    Naive forecasts: persistence is the target's quantity one row earlier (today's price for the
    next-day target; the stock's previous trading day's price in the paper setting, or today's
    close on its first row), last close is today's close. A market's oracle column goes with the
    next-day target, whose expectation it is. The technical features are computed on the
    province's own cleaned rows, before any row is held out, from each row's past alone.

    `forecast_quantity` (next-day only) turns the target, the oracle and last close into the
    change or the return over today's close; persistence is then zero change too.
    """
    columns = features_for(setting, features)
    quantity.check(forecast_quantity, setting)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    if setting == "next-day":
        frame = next_day_rows(raw, features)
        if frame.empty:
            raise ValueError("no usable rows remain after cleaning")
        dates = frame["date"].to_numpy()
        persistence = frame["price"]
        cutoff = cutoff or timesplit.agree_dates(dates, test_fraction)[1]
        is_test = timesplit.is_test(dates, cutoff)
    else:
        frame = clean(raw)
        frame = frame.assign(**{TARGET: frame["price"]})
        before = frame.sort_values(["code", "date"], kind="stable").groupby("code")["price"]
        persistence = before.shift(1).reindex(frame.index).fillna(frame["close"])
        order = np.random.default_rng(seed).permutation(len(frame))
        is_test = np.zeros(len(frame), dtype=bool)
        is_test[order[: round(len(frame) * test_fraction)]] = True
    x = frame[columns].to_numpy(dtype=np.float64)
    if len(x) == 0:
        raise ValueError("no usable rows remain after cleaning")
    close = frame["close"].to_numpy(dtype=np.float64)
    y = quantity.from_price(frame[TARGET].to_numpy(dtype=np.float64), close, forecast_quantity)
    reference = {forecast.PERSISTENCE: persistence, forecast.LAST_CLOSE: frame["close"]}
    if setting == "next-day" and ORACLE in frame:
        reference[ORACLE] = frame[ORACLE]
    values = {
        name: quantity.from_price(column.to_numpy(dtype=np.float64), close, forecast_quantity)
        for name, column in reference.items()
    }
    if forecast_quantity != quantity.DEFAULT:  # a move's persistence: no move, as last close
        values[forecast.PERSISTENCE] = quantity.no_change(close, forecast_quantity)
    return Split(
        columns,
        x[~is_test],
        y[~is_test],
        x[is_test],
        y[is_test],
        {name: column[~is_test] for name, column in values.items()},
        {name: column[is_test] for name, column in values.items()},
        frame["date"].to_numpy()[~is_test],
        frame["date"].to_numpy()[is_test],
    )


def statistics(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The sums a client shares: n, Σz and Σzzᵀ over z = [features, target]."""
    z = np.column_stack([x, y])
    return {"count": np.array(len(z), dtype=np.float64), "sum": z.sum(axis=0), "cross": z.T @ z}


@dataclass(frozen=True)
class GlobalStatistics:
    """Federation-wide mean, standard deviation and correlation, from summed statistics, of
    the features and the target, which is in the quantity `forecast` (common/quantity.py)."""

    columns: list[str]
    count: int
    mean: np.ndarray
    std: np.ndarray
    correlation: np.ndarray
    forecast: str = quantity.DEFAULT

    @classmethod
    def from_sums(
        cls,
        columns: list[str],
        parts: list[dict[str, np.ndarray]],
        forecast: str = quantity.DEFAULT,
    ) -> GlobalStatistics:
        count = float(sum(p["count"] for p in parts))
        if count < 2:
            raise ValueError("global statistics need at least two rows in the federation")
        mean = sum(p["sum"] for p in parts) / count
        covariance = sum(p["cross"] for p in parts) / count - np.outer(mean, mean)
        variance = np.clip(np.diag(covariance), 0.0, None)
        std = np.sqrt(variance)
        with np.errstate(divide="ignore", invalid="ignore"):
            correlation = covariance / np.outer(std, std)
        correlation[~np.isfinite(correlation)] = 0.0
        return cls(list(columns), int(count), mean, std, correlation, forecast)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], forecast: str) -> GlobalStatistics:
        """The statistics as a results file keeps them (correlations to 6 decimals), of a
        target in the quantity `forecast`: what a resumed server and a scorer of the saved
        model rebuild the run's scaler from."""
        return cls(
            list(record["columns"]),
            int(record["rows"]),
            np.asarray(record["mean"]),
            np.asarray(record["std"]),
            np.asarray(record["pearson"]),
            forecast,
        )

    def move_moments(self) -> tuple[float, float]:
        """Mean and deviation of the target's move from no move: from today's close for a
        price; a change or a return is a move already, and its moments are its own."""
        target = len(self.columns) - 1
        if self.forecast != quantity.DEFAULT:
            return float(self.mean[target]), float(self.std[target])
        close = self.columns.index("close")
        std = self.std
        variance = (
            std[target] ** 2
            + std[close] ** 2
            - 2 * self.correlation[target, close] * std[target] * std[close]
        )
        return float(self.mean[target] - self.mean[close]), float(np.sqrt(max(variance, 0.0)))

    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and scale of the features (not the target), as StandardScaler would fit them."""
        scale = self.std[:-1].copy()
        scale[scale == 0.0] = 1.0
        return self.mean[:-1].copy(), scale


def scale(x: np.ndarray, mean: np.ndarray, scale_: np.ndarray) -> np.ndarray:
    return (x - mean) / scale_
