"""Every score stands beside the naive forecasts on the same rows: persistence and last close."""

import numpy as np
import pytest

from client.groups import TaskGroups
from client.local import LocalWork
from client.trainers import DERIVED
from common import forecast, preprocess
from common.data import synthesize_province
from server.strategy import ClientResult, Evaluation
from server.summary import score_table
from tests.test_preprocess import raw_frame
from tests.test_svm import config


def test_scores_are_the_model_and_each_reference_on_the_same_rows():
    truth = np.array([10.0, 11.0, 9.0, 12.0])
    today = np.array([10.5, 10.0, 10.0, 12.0])
    close = np.array([10.0, 10.5, 9.5, 11.0])
    prediction = np.array([10.0, 10.5, 10.5, 12.5])
    metrics = forecast.scores(prediction, truth, {"persistence": today, "last_close": close})
    assert metrics["mse"] == pytest.approx(np.mean((prediction - truth) ** 2))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(prediction - truth)))
    assert metrics["persistence_mse"] == pytest.approx(np.mean((today - truth) ** 2))
    assert metrics["last_close_mse"] == pytest.approx(np.mean((close - truth) ** 2))
    # moves from today: down/down, up/up, up/down, up/flat → two of four called right
    assert metrics["direction"] == pytest.approx(0.5)


def test_skill_is_against_the_better_naive_forecast_and_achieved_skill_against_the_oracle():
    means = {"mse": 0.9, "persistence_mse": 2.0, "last_close_mse": 1.0, "oracle_mse": 0.8}
    out = forecast.derived(means)
    assert out["naive_mse"] == 1.0 and out["beats_naive"] is True
    assert out["skill"] == pytest.approx(0.1)
    assert out["achieved_skill"] == pytest.approx(0.5)
    worse = forecast.derived({**means, "mse": 1.2})
    assert worse["beats_naive"] is False and worse["skill"] == pytest.approx(-0.2)
    assert "NOT beat" in forecast.verdict(worse)
    # no ratio without a denominator: a perfect naive forecast, an oracle no better than it
    flat = forecast.derived({"mse": 0.1, "persistence_mse": 0.0, "oracle_mse": 0.0})
    assert flat["skill"] is None and flat["achieved_skill"] is None
    assert forecast.derived({"mse": 1.0}) == {}


def test_pooled_means_weigh_each_province_by_its_test_rows():
    a = forecast.province({"mse": 1.0, "persistence_mse": 2.0, "last_close_mse": 1.5}, 1)
    b = forecast.province({"mse": 4.0, "persistence_mse": 3.0, "last_close_mse": 6.0}, 3)
    assert a["skill"] == pytest.approx(1 - 1.0 / 1.5) and b["naive_mse"] == 3.0
    pooled = forecast.pooled({"a": a, "b": b})
    assert pooled["mse"] == pytest.approx(13 / 4)
    assert pooled["persistence_mse"] == pytest.approx(11 / 4)
    assert pooled["last_close_mse"] == pytest.approx(19.5 / 4)
    # the naive forecast of the whole is the better pooled one, not a mix of the provinces' bests
    assert pooled["naive_mse"] == pytest.approx(11 / 4) and pooled["beats_naive"] is False


def test_a_province_without_references_pools_to_the_mse_alone():
    evaluation = Evaluation.weighted(
        [
            ClientResult("a", 2, {"mse": 1.0, "persistence_mse": 2.0, "seconds": 0.1}),
            ClientResult("b", 2, {"mse": 3.0}),
        ]
    )
    assert evaluation.per_client["a"]["naive_mse"] == 2.0
    assert "seconds" not in evaluation.per_client["a"]
    pooled = forecast.pooled(evaluation.per_client)
    assert pooled == {"mse": pytest.approx(2.0)}


def test_split_carries_each_rows_naive_forecasts_for_both_settings():
    raw = raw_frame(days=10)
    nextday = preprocess.split(raw, "next-day", test_fraction=0.2)
    price = nextday.features.index("price")
    np.testing.assert_array_equal(nextday.reference_test["persistence"], nextday.x_test[:, price])
    close = nextday.features.index("close")
    np.testing.assert_array_equal(nextday.reference_test["last_close"], nextday.x_test[:, close])
    assert len(nextday.reference_train["persistence"]) == len(nextday.y_train)
    paper = preprocess.split(raw, "paper", test_fraction=0.2, seed=1)
    # the paper's target is today's price; persistence is the stock's price the day before
    cleaned = preprocess.clean(raw)
    yesterday = cleaned.groupby("code")["price"].shift(1).fillna(cleaned["close"])
    by_target = dict(zip(cleaned["price"], yesterday, strict=True))
    expected = [by_target[y] for y in paper.y_test]
    np.testing.assert_allclose(paper.reference_test["persistence"], expected)


def test_a_feature_list_may_not_name_the_oracle_or_the_target():
    with pytest.raises(ValueError, match="may not read"):
        preprocess.check_features(["close", "oracle"])
    with pytest.raises(ValueError, match="may not read"):
        preprocess.check_features(["target"])


def test_score_table_shows_the_naive_forecast_and_says_when_the_model_loses():
    data = preprocess.split(synthesize_province("hubei", 5_000, 1))
    scored = forecast.scores(data.reference_test["persistence"], data.y_test, data.reference_test)
    per_client = {"hubei": forecast.province(scored, len(data.y_test))}
    final = {**forecast.pooled(per_client), "per_client": per_client}
    table = "\n".join(score_table(final))
    assert "naive MSE" in table and "skill" in table and "hubei" in table and "overall" in table
    # persistence scored as a model cannot beat the better of persistence and last close
    assert final["skill"] <= 0 and "does NOT beat the naive forecast" in table


def test_a_kept_baseline_scores_as_one_derived_afresh_and_writeable_rows_are_not_kept():
    rng = np.random.default_rng(6)
    truth, today, close, prediction = (r.copy() for r in rng.normal(size=(4, 200)))
    reference = {"persistence": today, "last_close": close}
    afresh = forecast.scores(prediction, truth, reference)
    assert list(afresh) == ["mse", "mae", "direction", "persistence_mse", "last_close_mse"]
    rows, key = (truth, today, close), ("baseline", *reference)
    first = DERIVED.get(key, rows, lambda: forecast.baseline(truth, reference))
    truth[0] += 1.0  # writeable rows: derived anew, so the write shows
    moved = DERIVED.get(key, rows, lambda: forecast.baseline(truth, reference))
    assert moved.mses["persistence_mse"] != first.mses["persistence_mse"]
    for r in rows:
        r.flags.writeable = False
    kept = DERIVED.get(key, rows, lambda: forecast.baseline(truth, reference))
    assert DERIVED.get(key, rows, lambda: forecast.baseline(truth, reference)) is kept
    assert not kept.moves.flags.writeable
    assert forecast.scores(prediction, truth, reference, kept) == forecast.scores(
        prediction, truth, reference
    )
    plain = forecast.scores(prediction, truth, {"last_close": close})
    assert (
        "direction" not in plain and forecast.baseline(truth, {"last_close": close}).moves is None
    )


def test_a_provinces_references_are_read_only_as_its_kept_baseline_needs():
    groups = TaskGroups.parse(config())
    split = LocalWork(synthesize_province("hubei", 1_000, 3)).split(groups)
    assert split.reference_test and not any(
        r.flags.writeable for r in (split.y_test, *split.reference_test.values())
    )
