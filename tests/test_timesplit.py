"""One date cutoff for the whole federation: no province trains on a day another tests on."""

import numpy as np
import pandas as pd
import pytest

from baselines import centralised
from baselines.data import DataOptions
from baselines.models import ModelOptions
from client.groups import TaskGroups
from client.local import LocalWork
from common import preprocess, timesplit
from common.crossval import TimeFolds, fold_split
from common.data import synthesize_province
from common.provinces import PROVINCES
from common.settings import DataSettings, FoldSettings
from server.memory import MemoryChannel
from tests import in_memory

ROWS, SEED = 20_000, 3


def test_the_cutoff_holds_out_the_rows_the_pandas_quantile_of_the_union_does():
    rng = np.random.default_rng(0)
    for _ in range(300):
        span = int(rng.integers(2, 3_000))  # up to eight years: cutoffs at year boundaries too
        days = pd.to_timedelta(rng.integers(0, span, int(rng.integers(2, 400))), "D")
        dates = pd.Series(pd.Timestamp("2015-06-01") + days)
        fraction = float(rng.uniform(0.05, 0.5))
        expected = (dates > dates.quantile(1 - fraction)).to_numpy()
        if not expected.any():  # pandas would test on nothing: refused here
            with pytest.raises(ValueError, match="no rows are dated after"):
                timesplit.agree_dates(dates.to_numpy(), fraction)
            continue
        start, cutoff = timesplit.agree_dates(dates.to_numpy(), fraction)
        assert start == str(dates.min().date())
        np.testing.assert_array_equal(timesplit.is_test(dates.to_numpy(), cutoff), expected)


def test_the_cutoff_needs_the_days_of_at_most_three_years():
    dates = pd.date_range("2000-01-03", "2019-12-31", freq="B").to_numpy()
    years = timesplit.year_counts(dates)
    asked = timesplit.years_asked(years, 0.2)
    assert asked == [2000, 2015]  # the first year, and the year 80 % of the rows end in
    counts = timesplit.day_counts(dates, asked)
    in_asked = pd.DatetimeIndex(dates).year.isin(asked).sum()
    assert counts.shape == (2, timesplit.YEAR_DAYS) and counts.sum() == in_asked
    assert timesplit.agree(years, asked, counts, 0.2) == timesplit.agree_dates(dates, 0.2)


def test_day_counts_that_no_rows_could_make_are_refused():
    dates = np.array(["2020-01-02", "2020-01-03"], dtype="datetime64[D]")
    years = timesplit.year_counts(dates)
    timesplit.check_counts(years, (timesplit.YEARS,), 2)
    days = timesplit.day_counts(dates, [2020])
    timesplit.check_counts(days, (1, timesplit.YEAR_DAYS), 2)
    for bad, shape, rows in (
        (years * -1, (timesplit.YEARS,), -2),
        (years * 0.75, (timesplit.YEARS,), 1.5),
        (years[:-1], (timesplit.YEARS,), 2),
        (years, (timesplit.YEARS,), 3),
        (days, (1, timesplit.YEAR_DAYS), 1),  # more rows on the days than the province has
    ):
        with pytest.raises(ValueError, match="day counts"):
            timesplit.check_counts(bad, shape, rows)
    with pytest.raises(ValueError, match="calendar"):
        timesplit.year_counts(np.array(["1980-01-01"], dtype="datetime64[D]"))
    with pytest.raises(ValueError, match="two rows"):
        timesplit.years_asked(timesplit.year_counts(dates[:1]), 0.2)


def shifted_market() -> dict[str, LocalWork]:
    """Nine provinces whose calendars differ: every other one's rows are 60 days later, so each
    province's own date quantile would be a different cutoff."""
    works = {}
    for k, province in enumerate(PROVINCES):
        raw = synthesize_province(province, ROWS, SEED)
        works[province] = LocalWork(raw.assign(date=raw["date"] + pd.Timedelta(days=60 * (k % 2))))
    return works


def test_every_province_tests_strictly_after_the_one_cutoff_and_trains_up_to_it(tmp_path):
    works = shifted_market()
    results = in_memory.run(tmp_path, "--model", "lr", "--rounds", "1", over=MemoryChannel(works))
    split = results["split"]
    assert split["kind"] == "time"
    cutoff = np.datetime64(split["cutoff"], "D")
    assert split["cutoff"] == str(cutoff)  # ISO YYYY-MM-DD
    union = pd.concat([preprocess.next_day_rows(w.raw)["date"] for w in works.values()])
    assert cutoff == np.datetime64(union.quantile(0.8), "D")
    settings = DataSettings("next-day", 0.2, 0, "paper", split["start"], split["cutoff"])
    own_cutoffs = set()
    for work in works.values():
        data = work.split(
            TaskGroups.parse(settings.to_config())
        )  # the split this province trained and tested on
        assert len(data.dates_test) and len(data.dates_train)
        assert (data.dates_test.astype("datetime64[D]") > cutoff).all()
        assert (data.dates_train.astype("datetime64[D]") <= cutoff).all()
        alone = preprocess.split(work.raw)  # what the province would have cut on its own
        own_cutoffs.add(alone.dates_train.max())
    assert len(own_cutoffs) > 1  # ... which differs across provinces: the test can fail
    assert "in the clear" in results["disclosure"]["dates"]["server"]


def test_the_centralised_baseline_agrees_the_same_cutoff_as_the_federation(tmp_path):
    federated = in_memory.run(tmp_path, "--model", "lr", "--rounds", "1")
    baseline = centralised.run("lr", DataOptions(rows=ROWS, seed=SEED), ModelOptions())
    assert baseline["split"] == federated["split"]
    assert baseline["final"]["per_client"].keys() == federated["final"]["per_client"].keys()
    for province, score in baseline["final"]["per_client"].items():
        assert score["n_test"] == federated["final"]["per_client"][province]["n_test"]


def test_the_paper_setting_keeps_its_random_split_and_asks_no_dates(tmp_path):
    results = in_memory.run(tmp_path, "--model", "lr", "--rounds", "1", "--setting", "paper")
    assert results["split"] == {"kind": "random", "test_fraction": 0.2, "seed": 0}
    assert "dates" not in results["disclosure"]


def gap_days(validation: np.ndarray, training: np.ndarray) -> int:
    """The fewest days between a validation date and a training date."""
    v = np.unique(validation.astype("datetime64[D]")).astype(np.int64)
    t = np.unique(training.astype("datetime64[D]")).astype(np.int64)
    return int(np.abs(v[:, None] - t[None, :]).min())


def test_no_validation_day_lies_within_the_embargo_of_a_training_day():
    data = preprocess.split(synthesize_province("hubei", 6_000, 1))
    start, cutoff = str(data.dates_train.min())[:10], str(data.dates_train.max())[:10]
    for embargo in (0, 5, 12):
        seen = 0
        for fold in range(4):
            by_time = TimeFolds(start, cutoff, embargo)
            part = fold_split(data, 4, fold, 0, by_time)
            assert len(part.y_train) and len(part.y_test)
            assert gap_days(part.dates_test, part.dates_train) > embargo
            seen += len(part.y_test)
        assert seen == len(data.y_train)  # every training row validates in exactly one fold
    # the random folds of the paper setting do put validation days beside training days
    random = fold_split(data, 4, 0, 0)
    assert gap_days(random.dates_test, random.dates_train) == 0


def test_federated_cross_validation_in_the_next_day_setting_is_by_time(tmp_path):
    works = shifted_market()
    # provinces listed late have no training rows in some folds and sit those out, whatever
    # the quorum (all nine by default)
    flags = ["--model", "lr", "--rounds", "1", "--cv-folds", "3", "--cv-embargo", "7"]
    results = in_memory.run(tmp_path, *flags, over=MemoryChannel(works))
    selection, split = results["model_selection"], results["split"]
    assert selection["kind"] == "time" and selection["embargo_days"] == 7
    assert all(mse is not None for mse in selection["candidates"][0]["fold_mse"])
    data = DataSettings("next-day", 0.2, 0, "paper", split["start"], split["cutoff"])
    for fold in range(3):
        config = {**data.to_config(), **FoldSettings(3, fold, 7).to_config()}
        parts = [work.split(TaskGroups.parse(config)) for work in works.values()]
        validation = np.concatenate([p.dates_test for p in parts])
        training = np.concatenate([p.dates_train for p in parts])
        # across provinces too: no province trains within a week of a day another validates on
        assert gap_days(validation, training) > 7
