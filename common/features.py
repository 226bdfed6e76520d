"""The feature sets a province computes from its own cleaned rows, the same code everywhere.

`paper` is the seed paper's seven columns (plus today's average price when forecasting
tomorrow). `technical` keeps today's close and average price as the level a price forecast
starts from, and adds what a forecaster reads off a stock's own recent bars: lagged returns,
the close against its moving averages, rolling volatility, turnover against its own norm and
whether the day closed at a price limit. Every one of them is computed per stock in date order
from rows up to and including the row's own day, so no feature can see tomorrow. A stock's first
rows, without enough history, get the neutral value (no move, ratio 1, no volatility).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd  # frames come from the callers (client, baselines); the server has none

FEATURE_SETS = ("paper", "technical")
RETURN_LAGS = (1, 2, 5)
AVERAGE_WINDOWS = (5, 20)
VOLATILITY_WINDOW = 20
TURNOVER_WINDOW = 20
# Limit prices are quoted to the fen; a close within half a fen of one closed at the limit.
LIMIT_TOLERANCE = 0.005
TECHNICAL_COLUMNS = [
    "close",
    "price",
    *(f"return_{lag}" for lag in RETURN_LAGS),
    *(f"close_ma{window}" for window in AVERAGE_WINDOWS),
    f"volatility_{VOLATILITY_WINDOW}",
    f"turnover_{TURNOVER_WINDOW}",
    "at_high_limit",
    "at_low_limit",
]


def check_feature_set(name: str) -> str:
    if name not in FEATURE_SETS:
        raise ValueError(
            f"unknown feature set {name!r}; expected one of: {', '.join(FEATURE_SETS)}"
        )
    return name


def technical(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (cleaned rows, sorted by stock then date) with the technical columns added."""
    codes = frame["code"]
    close = frame["close"]

    daily = close / close.groupby(codes, sort=False).shift(1) - 1.0
    columns: dict[str, pd.Series] = {
        f"return_{lag}": (close / close.groupby(codes, sort=False).shift(lag) - 1.0).fillna(0.0)
        for lag in RETURN_LAGS
    }
    for window in AVERAGE_WINDOWS:
        columns[f"close_ma{window}"] = close / _rolled(close, codes, window, "mean")
    volatility = _rolled(daily, codes, VOLATILITY_WINDOW, "std")
    columns[f"volatility_{VOLATILITY_WINDOW}"] = volatility.fillna(0.0)
    volume = frame["volume"]
    columns[f"turnover_{TURNOVER_WINDOW}"] = volume / _rolled(
        volume, codes, TURNOVER_WINDOW, "mean"
    )
    columns["at_high_limit"] = (close >= frame["high_limit"] - LIMIT_TOLERANCE).astype(np.float64)
    columns["at_low_limit"] = (close <= frame["low_limit"] + LIMIT_TOLERANCE).astype(np.float64)
    return frame.assign(**columns)


def _rolled(values: pd.Series, codes: pd.Series, window: int, statistic: str) -> pd.Series:
    """Each stock's `statistic` ("mean" or "std") over its last `window` rows, back in row order;
    NaN where a standard deviation has fewer than two rows."""
    rolling = values.groupby(codes, sort=False).rolling(window, min_periods=1)
    return getattr(rolling, statistic)().reset_index(level=0, drop=True)
