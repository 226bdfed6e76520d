"""The technical features: computed per stock from each row's past alone, never tomorrow's."""

import numpy as np
import pandas as pd
import pytest

from baselines import centralised
from baselines.data import DataOptions
from baselines.models import ModelOptions
from common import features, preprocess
from common.data import synthesize_province
from server.config import RunSettings
from tests import in_memory
from tests.test_preprocess import raw_frame


def technical(raw: pd.DataFrame) -> pd.DataFrame:
    cleaned = preprocess.clean(raw).sort_values(["code", "date"], kind="stable")
    return features.technical(cleaned)


def test_a_feature_for_day_t_does_not_change_when_later_days_do():
    raw = synthesize_province("hubei", 4_000, 5)
    days = np.sort(raw["date"].unique())
    t = days[len(days) // 2]
    later = raw["date"] > t
    altered = raw.copy()
    # every later bar different: prices doubled, volume tripled, some later days suspended
    altered.loc[later, ["open", "close", "high", "low", "high_limit", "low_limit"]] *= 2.0
    altered.loc[later, ["volume", "money"]] *= 3.0
    altered.loc[later & (altered.index % 7 == 0), ["volume", "money"]] = 0.0
    before, after = technical(raw), technical(altered)
    past = lambda frame: frame[frame["date"] <= t].set_index(["code", "date"]).sort_index()  # noqa: E731
    columns = features.TECHNICAL_COLUMNS
    pd.testing.assert_frame_equal(past(before)[columns], past(after)[columns])
    # ... while the later rows' own features did change (the test can fail)
    assert not np.allclose(
        before.loc[before["date"] > t, "turnover_20"].to_numpy()[:50],
        after.loc[after["date"] > t, "turnover_20"].to_numpy()[:50],
    )


def test_a_stocks_features_come_from_its_own_rows_only():
    raw = raw_frame(days=30, codes=("600000.XSHG", "000001.XSHE"))
    other = raw["code"] == "000001.XSHE"
    altered = raw.copy()
    altered.loc[other, ["close", "volume", "money"]] *= 5.0
    mine = lambda frame: frame[frame["code"] == "600000.XSHG"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(mine(technical(raw)), mine(technical(altered)))


def test_technical_features_by_hand_on_a_short_history():
    raw = raw_frame(days=6, codes=("600000.XSHG",))
    raw.loc[5, "close"] = raw.loc[5, "high_limit"]  # the last day closes at its upper limit
    frame = technical(raw)
    close, volume = raw["close"].to_numpy(), raw["volume"].to_numpy()
    np.testing.assert_allclose(frame["return_1"], [0, *(close[1:] / close[:-1] - 1)])
    np.testing.assert_allclose(frame["return_5"], [0, 0, 0, 0, 0, close[5] / close[0] - 1])
    np.testing.assert_allclose(frame["close_ma5"].iloc[5], close[5] / close[1:6].mean())
    np.testing.assert_allclose(frame["close_ma20"].iloc[0], 1.0)
    np.testing.assert_allclose(frame["turnover_20"].iloc[2], volume[2] / volume[:3].mean())
    returns = close[1:] / close[:-1] - 1
    np.testing.assert_allclose(frame["volatility_20"].iloc[:2], [0.0, 0.0])
    np.testing.assert_allclose(frame["volatility_20"].iloc[5], np.std(returns, ddof=1))
    assert frame["at_high_limit"].tolist() == [0, 0, 0, 0, 0, 1]
    assert frame["at_low_limit"].sum() == 0


def test_the_split_reads_the_technical_columns_and_keeps_the_paper_rows():
    raw = synthesize_province("fujian", 3_000, 2)
    paper = preprocess.split(raw, "next-day")
    tech = preprocess.split(raw, "next-day", features="technical")
    assert tech.features == features.TECHNICAL_COLUMNS
    assert np.isfinite(tech.x_train).all() and np.isfinite(tech.x_test).all()
    # the same rows and targets, so MSEs of the two feature sets compare
    np.testing.assert_array_equal(paper.y_test, tech.y_test)
    np.testing.assert_array_equal(paper.reference_test["last_close"], tech.x_test[:, 0])


def test_feature_sets_are_refused_where_they_have_no_meaning():
    with pytest.raises(ValueError, match="next-day setting"):
        preprocess.features_for("paper", "technical")
    with pytest.raises(ValueError, match="unknown feature set"):
        preprocess.features_for("next-day", "oracle")
    with pytest.raises(ValueError, match="next-day setting"):
        RunSettings(1, 1, 1, 1.0, 1.0, "paper", 0.2, 0, "technical")


def test_a_federation_trains_on_the_technical_features(tmp_path):
    results = in_memory.run(tmp_path, "--model", "lr", "--rounds", "1", "--features", "technical")
    assert results["features"] == "technical"
    assert results["statistics"]["columns"] == [*features.TECHNICAL_COLUMNS, "target"]
    final = results["final"]
    assert np.isfinite(final["mse"]) and final["naive_mse"] > 0


def test_the_centralised_baseline_reads_the_same_technical_columns():
    data = DataOptions(rows=5_000, seed=3, feature_set="technical")
    outcome = centralised.run("lr", data, ModelOptions())
    assert outcome["data"]["feature_set"] == "technical"
    assert np.isfinite(outcome["final"]["mse"]) and outcome["final"]["naive_mse"] > 0
