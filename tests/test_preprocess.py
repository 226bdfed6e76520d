import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

from common import preprocess


def raw_frame(days=10, codes=("A", "B")):
    rows = []
    for k, code in enumerate(codes):
        for d in range(days):
            close = 10.0 + k + d * 0.1
            rows.append(
                {
                    "date": pd.Timestamp("2020-01-01") + pd.Timedelta(days=d),
                    "code": code,
                    "open": close,
                    "close": close,
                    "high": close + 0.2,
                    "low": close - 0.2,
                    "volume": 1000.0 * (d + 1),
                    "money": 1000.0 * (d + 1) * (close + 0.05),
                    "high_limit": close * 1.1,
                    "low_limit": close * 0.9,
                    "paused": 0,
                }
            )
    return pd.DataFrame(rows)


def test_clean_adds_price_and_drops_missing_infinite_and_suspended_rows():
    raw = raw_frame()
    raw.loc[1, "close"] = np.nan
    raw.loc[2, "money"] = np.inf
    raw.loc[3, ["volume", "money"]] = 0.0  # suspended: price 0/0
    cleaned = preprocess.clean(raw)
    assert len(cleaned) == len(raw) - 3
    np.testing.assert_allclose(cleaned["price"], cleaned["money"] / cleaned["volume"])


def test_next_day_target_is_the_next_traded_price_and_split_is_by_time():
    split = preprocess.split(raw_frame(days=10), "next-day", test_fraction=0.2)
    assert split.features == preprocess.NEXT_DAY_FEATURES
    # Each stock loses its last day (no tomorrow): 9 usable days each.
    assert len(split.y_train) + len(split.y_test) == 18
    price = split.x_train[:, split.features.index("price")]
    # within a stock, the target is the next row's price
    assert split.y_train[0] == pytest.approx(price[1])
    assert split.x_test[:, 0].min() > 0  # test rows exist
    assert len(split.y_test) == 4  # the last 2 of 9 days, per stock


def test_next_day_dates_are_those_of_the_next_day_rows():
    """Read from the codes and dates alone, they are the dates of the rows `next_day_rows`
    builds, in its order: with missing, infinite and suspended rows, a stock whose last day
    is suspended, a stock with one usable day, and rows out of order."""
    raw = raw_frame(days=6, codes=("B", "A", "C"))
    raw.loc[1, "close"] = np.nan
    raw.loc[2, "money"] = np.inf
    raw.loc[11, ["volume", "money"]] = 0.0  # A's last day suspended
    raw.loc[13:17, "volume"] = 0.0  # C trades on its first day only
    raw = raw.sample(frac=1.0, random_state=0)
    expected = preprocess.next_day_rows(raw)["date"].to_numpy()
    assert len(expected) == 3 + 4  # B: 4 usable days, A: 5; C none with a tomorrow
    np.testing.assert_array_equal(preprocess.next_day_dates(raw), expected)


def test_paper_setting_uses_same_day_price_and_a_seeded_random_split():
    a = preprocess.split(raw_frame(), "paper", test_fraction=0.2, seed=1)
    b = preprocess.split(raw_frame(), "paper", test_fraction=0.2, seed=1)
    c = preprocess.split(raw_frame(), "paper", test_fraction=0.2, seed=2)
    assert a.features == preprocess.PAPER_FEATURES
    assert len(a.y_test) == 4 and len(a.y_train) == 16
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)


def test_bad_settings_and_empty_provinces_are_clear_errors():
    with pytest.raises(ValueError, match="unknown setting"):
        preprocess.split(raw_frame(), "tomorrow")
    with pytest.raises(ValueError, match="strictly between"):
        preprocess.split(raw_frame(), test_fraction=1.0)
    raw = raw_frame()
    raw["volume"] = 0.0
    with pytest.raises(ValueError, match="no usable rows"):
        preprocess.split(raw)


def test_global_statistics_from_per_client_sums_equal_pooled_ones():
    rng = np.random.default_rng(0)
    parts = [
        (rng.normal(loc=k, scale=k + 1, size=(50 + k, 3)), rng.normal(size=50 + k))
        for k in range(4)
    ]
    stats = preprocess.GlobalStatistics.from_sums(
        ["a", "b", "c", "target"], [preprocess.statistics(x, y) for x, y in parts]
    )
    x_all = np.vstack([x for x, _ in parts])
    y_all = np.concatenate([y for _, y in parts])
    pooled = StandardScaler().fit(x_all)
    mean, scale = stats.scaler()
    np.testing.assert_allclose(mean, pooled.mean_, rtol=1e-10)
    np.testing.assert_allclose(scale, pooled.scale_, rtol=1e-10)
    np.testing.assert_allclose(
        stats.correlation, np.corrcoef(np.column_stack([x_all, y_all]).T), atol=1e-10
    )
    assert stats.count == len(y_all)


def test_constant_feature_scales_by_one_and_correlates_zero():
    x = np.column_stack([np.ones(10), np.arange(10.0)])
    stats = preprocess.GlobalStatistics.from_sums(
        ["c", "v", "t"], [preprocess.statistics(x, np.arange(10.0))]
    )
    _, scale = stats.scaler()
    assert scale[0] == 1.0
    assert stats.correlation[0, 1] == 0.0
