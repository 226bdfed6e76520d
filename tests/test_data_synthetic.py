"""The synthetic market: exact sizes, determinism, A-share rules and non-IID provinces."""

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import StandardScaler

from common import preprocess
from common.data import (
    DataError,
    load_province,
    synthesize,
    synthesize_province,
    validate_raw,
    write_provinces,
)
from common.data.ashare import round_price
from common.data.facts import stylised_facts
from common.data.schema import ORACLE, RAW_COLUMNS
from common.data.synthetic import CALENDAR, PAPER_ROWS, province_rows
from common.provinces import PROVINCES


@pytest.fixture(scope="module")
def market() -> dict[str, pd.DataFrame]:
    return synthesize(100_000, seed=0)


@pytest.fixture(scope="module")
def rows(market: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All provinces, with each row's previous close (NaN on a stock's first day)."""
    frame = pd.concat(market.values(), ignore_index=True)
    return frame.assign(previous=frame.groupby("code")["close"].shift())


@pytest.mark.parametrize("total", [1_000, 5_000, 12_345, 100_000, PAPER_ROWS, 10_000_000])
def test_allocation_is_exact_and_unequal(total: int) -> None:
    counts = province_rows(total)
    assert list(counts) == list(PROVINCES)
    assert sum(counts.values()) == total
    assert min(counts.values()) > 0
    assert counts["guangdong"] > counts["zhejiang"] > counts["shandong"] > counts["hubei"]


def test_paper_size_allocation() -> None:
    counts = province_rows(PAPER_ROWS)
    assert counts["guangdong"] == 539_946 and counts["hubei"] == 134_986
    assert sum(counts.values()) == 2_699_730


@pytest.mark.parametrize("total", [5_000, 100_000])
def test_generated_rows_match_the_allocation(total: int) -> None:
    counts = province_rows(total)
    frames = synthesize(total, seed=3)
    assert {p: len(f) for p, f in frames.items()} == counts
    assert all(frame["code"].nunique() >= 2 for frame in frames.values())


@pytest.mark.parametrize("total", [0, 999, 10_000_001])
def test_sizes_out_of_range_are_refused(total: int) -> None:
    with pytest.raises(DataError, match="total rows must be between"):
        province_rows(total)


def test_bad_province_or_seed_is_refused() -> None:
    with pytest.raises(DataError, match="unknown member 'tibet'"):
        synthesize_province("tibet", 5_000, 0)
    with pytest.raises(DataError, match="non-negative"):
        synthesize_province("hubei", 5_000, -1)


def test_frames_are_canonical(market: dict[str, pd.DataFrame]) -> None:
    for province, frame in market.items():
        pd.testing.assert_frame_equal(validate_raw(frame, province), frame)
        assert str(frame["code"].dtype) == "str"
        assert frame["date"].dtype == "datetime64[ns]"
        keys = frame[["code", "date"]]
        assert keys.equals(keys.sort_values(["code", "date"], ignore_index=True))
    codes = [set(frame["code"]) for frame in market.values()]
    assert sum(map(len, codes)) == len(set().union(*codes)), "codes unique across provinces"


def test_calendar_and_listing_dates(market: dict[str, pd.DataFrame]) -> None:
    frame = market["guangdong"]
    assert frame["date"].min() >= pd.Timestamp("2014-01-02")
    assert frame["date"].max() == CALENDAR[-1] <= pd.Timestamp("2020-12-31")
    assert (frame["date"].dt.day_of_week < 5).all()
    assert frame.groupby("code").size().nunique() > 1, "stocks list on different days"


def test_same_seed_same_frames_and_parquet_bytes(tmp_path) -> None:
    first, second = synthesize(5_000, seed=11), synthesize(5_000, seed=11)
    for province in PROVINCES:
        pd.testing.assert_frame_equal(first[province], second[province])
    a = write_provinces(first, tmp_path / "a")
    b = write_provinces(second, tmp_path / "b")
    c = write_provinces(synthesize(5_000, seed=12), tmp_path / "c")
    for province in PROVINCES:
        assert a[province].read_bytes() == b[province].read_bytes()
        assert a[province].read_bytes() != c[province].read_bytes()


def test_a_province_alone_equals_its_part_of_the_market(market) -> None:
    alone = synthesize_province("sichuan", 100_000, seed=0)
    pd.testing.assert_frame_equal(alone, market["sichuan"])


def test_different_seeds_differ() -> None:
    a = synthesize_province("hubei", 5_000, seed=1)
    b = synthesize_province("hubei", 5_000, seed=2)
    assert not a["close"].equals(b["close"])


def test_prices_are_in_fen_positive_and_consistent(rows: pd.DataFrame) -> None:
    prices = rows[["open", "close", "high", "low", "high_limit", "low_limit"]]
    values = prices.to_numpy()
    known = ~np.isnan(values)
    assert (values[known] > 0).all()
    assert np.allclose(values[known], round_price(values[known]), atol=1e-9)
    full = rows.dropna()
    assert (full["low"] <= full[["open", "close"]].min(axis=1)).all()
    assert (full["high"] >= full[["open", "close"]].max(axis=1)).all()
    for column in ("open", "close", "high", "low"):
        assert full[column].between(full["low_limit"], full["high_limit"]).all(), column


def test_limits_follow_the_previous_close(rows: pd.DataFrame) -> None:
    """±10 %, or ±5 % for ST stocks, of the previous close, rounded to the fen."""
    full = rows.dropna()
    up = {rate: round_price(full["previous"] * (1 + rate)) for rate in (0.10, 0.05)}
    down = {rate: round_price(full["previous"] * (1 - rate)) for rate in (0.10, 0.05)}
    normal = np.isclose(full["high_limit"], up[0.10]) & np.isclose(full["low_limit"], down[0.10])
    st = np.isclose(full["high_limit"], up[0.05]) & np.isclose(full["low_limit"], down[0.05])
    assert (normal | st).all()
    st_share = pd.Series(st, index=full.index).groupby(full["code"]).all()
    assert st_share.any(), "some ST stocks"
    assert st_share.mean() < 0.15
    assert (pd.Series(normal | st).groupby(full["code"].to_numpy()).nunique() == 1).all()


def test_suspended_days(rows: pd.DataFrame) -> None:
    paused = rows[rows["paused"] == 1]
    assert 0.005 < len(paused) / len(rows) < 0.02
    assert (paused[["volume", "money"]].fillna(0) == 0).all().all()
    for column in ("open", "close", "high", "low"):
        known = paused[[column, "previous"]].dropna()
        assert (known[column] == known["previous"]).all(), column
    traded = rows[(rows["paused"] == 0)].dropna()
    assert (traded["volume"] > 0).all()


def test_volume_and_money(rows: pd.DataFrame) -> None:
    traded = rows[rows["paused"] == 0].dropna()
    assert (traded["volume"] % 100 == 0).all()
    price = traded["money"] / traded["volume"]
    assert price.between(traded["low"] - 1e-6, traded["high"] + 1e-6).all()


def test_some_values_are_missing_one_per_row(rows: pd.DataFrame) -> None:
    numbers = rows[["open", "close", "high", "low", "volume", "money", "high_limit", "low_limit"]]
    per_row = numbers.isna().sum(axis=1)
    assert 0.0003 < (per_row > 0).mean() < 0.003
    assert per_row.max() == 1
    assert rows[["date", "code", "paused"]].notna().all().all()


def test_provinces_are_not_identically_distributed(market: dict[str, pd.DataFrame]) -> None:
    mean_close = {province: frame["close"].mean() for province, frame in market.items()}
    for rich in ("beijing", "shanghai"):
        for cheap in ("hubei", "sichuan", "fujian"):
            assert mean_close[rich] > mean_close[cheap], (rich, cheap)
    assert len({len(frame) for frame in market.values()}) > 3


def test_validate_raw_rejects_what_it_cannot_fix(market) -> None:
    frame = market["hubei"].head(5)
    with pytest.raises(DataError, match=r"x: missing column\(s\) money"):
        validate_raw(frame.drop(columns="money"), "x")
    with pytest.raises(DataError, match="x: no rows"):
        validate_raw(frame.iloc[:0], "x")
    with pytest.raises(DataError, match=r"column 'close' needs numbers, found 'n/a' in data row 3"):
        validate_raw(frame.assign(close=["1", "2", "n/a", "4", "5"]), "x")
    with pytest.raises(DataError, match="column 'paused' needs 0 or 1, found 2"):
        validate_raw(frame.assign(paused=[0, 0, 0, 0, 2]), "x")
    with pytest.raises(DataError, match=r"column 'code' needs JoinQuant codes.*'600000\.SH'"):
        validate_raw(frame.assign(code="600000.SH"), "x")
    with pytest.raises(DataError, match="column 'date' needs dates, found 'soon'"):
        validate_raw(frame.assign(date=["2020-01-02"] * 4 + ["soon"]), "x")
    with pytest.raises(DataError, match="appears twice on"):
        validate_raw(pd.concat([frame, frame.tail(1)]), "x")


def test_an_oracle_column_beside_every_row_survives_validation_and_parquet(market, tmp_path):
    frame = market["hubei"]
    assert list(frame.columns) == [*RAW_COLUMNS, ORACLE]
    assert np.isfinite(frame[ORACLE]).all() and (frame[ORACLE] > 0).all()
    written = write_provinces({"hubei": frame}, tmp_path)
    pd.testing.assert_frame_equal(load_province(tmp_path, "hubei"), frame)
    assert written["hubei"].is_file()
    with pytest.raises(DataError, match="column 'oracle' needs numbers"):
        validate_raw(frame.head(3).assign(oracle=["1", "x", "2"]), "x")


def test_stylised_facts_of_daily_bars(market) -> None:
    """Returns nearly unpredictable, their volatility clustered and fat-tailed."""
    facts = stylised_facts(pd.concat(market.values(), ignore_index=True))
    assert facts["returns"] > 90_000
    assert -0.1 < facts["return_autocorrelation"] < 0, facts  # a few percent of reversal
    assert facts["abs_return_autocorrelation"] > 0.08, facts  # big moves follow big moves
    assert facts["excess_kurtosis"] > 0.5, facts  # fatter tails than a normal's


def test_the_oracle_is_the_best_forecast_and_the_close_beats_the_average_price(market) -> None:
    splits = [preprocess.split(frame) for frame in market.values()]
    y = np.concatenate([s.y_test for s in splits])
    mse = {
        name: float(np.mean((np.concatenate([s.reference_test[name] for s in splits]) - y) ** 2))
        for name in ("persistence", "last_close", ORACLE)
    }
    # today's close predicts tomorrow's average price markedly better than today's average does
    assert mse["last_close"] < 0.8 * mse["persistence"], mse
    # ... and the process's own expectation better still, by a little: the signal is weak
    assert 0.97 * mse["last_close"] < mse[ORACLE] < mse["last_close"], mse


def test_no_model_scores_far_below_the_oracle(market) -> None:
    """A model more than 2 % below the oracle's MSE would have read what it must not."""
    splits = [preprocess.split(frame) for frame in market.values()]
    x, y = np.vstack([s.x_train for s in splits]), np.concatenate([s.y_train for s in splits])
    x_test, y_test = (
        np.vstack([s.x_test for s in splits]),
        np.concatenate([s.y_test for s in splits]),
    )
    oracle = np.concatenate([s.reference_test[ORACLE] for s in splits])
    scaler = StandardScaler().fit(x)
    models = [LinearRegression(), RandomForestRegressor(20, max_depth=10, random_state=0, n_jobs=1)]
    for model in models:
        model.fit(scaler.transform(x), y)
        mse = np.mean((model.predict(scaler.transform(x_test)) - y_test) ** 2)
        assert mse >= 0.98 * np.mean((oracle - y_test) ** 2), type(model).__name__
