"""The canonical raw frame: what every loader returns and every province Parquet file holds.

One row per stock per trading day. Checking it once, here, lets preprocessing and training
trust the dtypes, and lets a person fix bad input from the message alone.
"""

import numpy as np
import pandas as pd

from common.data.ashare import JOINQUANT_CODE
from common.forecast import ORACLE

FLOAT_COLUMNS = ("open", "close", "high", "low", "volume", "money", "high_limit", "low_limit")
RAW_COLUMNS = ("date", "code", *FLOAT_COLUMNS, "paused")
# ORACLE (common/forecast.py) names the column of a synthetic market's own expectation of the
# next trading day's average price: kept after the raw columns when a frame has it, for scoring
# only; no model reads it.


class DataError(ValueError):
    """Input data a person has to fix; the message says where and what."""


def _first_bad(source: str, column: str, values: pd.Series, bad: pd.Series, problem: str) -> str:
    position = int(np.flatnonzero(bad.to_numpy())[0])
    example = values.iloc[position]
    if pd.isna(example):
        shown = "an empty cell"
    else:
        shown = repr(example) if isinstance(example, str) else str(example)
    return (
        f"{source}: column {column!r} {problem} {shown} in data row {position + 1} "
        f"({int(bad.sum())} bad value(s) in all)"
    )


def to_float(values: pd.Series, column: str, source: str) -> pd.Series:
    """Numbers as float64 (missing cells stay NaN); anything unparseable is a DataError."""
    if values.dtype == np.float64:
        return values
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        raise DataError(_first_bad(source, column, values, bad, "needs numbers, found"))
    return pd.Series(numbers.to_numpy(dtype=np.float64, na_value=np.nan), index=values.index)


def to_dates(values: pd.Series, column: str, source: str, format: str | None = None) -> pd.Series:
    """Timezone-naive datetime64[ns]; an empty or unparseable date is a DataError."""
    if values.dtype == "datetime64[ns]" and not values.isna().any():
        return values
    dates = pd.to_datetime(values, errors="coerce", format=format)
    bad = dates.isna()
    if bad.any():
        raise DataError(_first_bad(source, column, values, bad, "needs dates, found"))
    if dates.dt.tz is not None:
        dates = dates.dt.tz_localize(None)
    try:
        return dates.astype("datetime64[ns]")
    except (ValueError, OverflowError):
        raise DataError(f"{source}: column {column!r} has dates outside 1678–2261") from None


def _to_codes(values: pd.Series, source: str) -> pd.Series:
    codes = values.astype("str")
    wrong = [code for code in codes.unique() if not JOINQUANT_CODE.fullmatch(str(code))]
    if values.isna().any() or wrong:
        bad = values.isna() | codes.isin(wrong)
        problem = "needs JoinQuant codes like 600000.XSHG or 000001.XSHE, found"
        raise DataError(_first_bad(source, "code", values, bad, problem))
    return codes


def _to_flags(values: pd.Series, source: str) -> pd.Series:
    numbers = to_float(values, "paused", source)
    bad = ~numbers.isin((0.0, 1.0))
    if bad.any():
        raise DataError(_first_bad(source, "paused", values, bad, "needs 0 or 1, found"))
    return numbers.astype(np.int8)


def validate_raw(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Return `df` as the canonical raw frame (RAW_COLUMNS, in order, then ORACLE if `df` has
    it), or raise DataError.

    `source` names where the rows came from (a file, a province) so the message can say it.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: expected a table of rows, got {type(df).__name__}")
    missing = [column for column in RAW_COLUMNS if column not in df.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"a raw frame needs {', '.join(RAW_COLUMNS)}"
        )
    if df.empty:
        raise DataError(f"{source}: no rows")
    df = df.reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "date": to_dates(df["date"], "date", source),
            "code": _to_codes(df["code"], source),
            **{column: to_float(df[column], column, source) for column in FLOAT_COLUMNS},
            "paused": _to_flags(df["paused"], source),
            **({ORACLE: to_float(df[ORACLE], ORACLE, source)} if ORACLE in df else {}),
        }
    )
    repeated = frame.duplicated(["code", "date"])
    if repeated.any():
        position = int(np.flatnonzero(repeated.to_numpy())[0])
        code, date = frame.at[position, "code"], frame.at[position, "date"]
        raise DataError(
            f"{source}: {code} appears twice on {date:%Y-%m-%d} (data row {position + 1}); "
            "keep one row per stock per day"
        )
    return frame
