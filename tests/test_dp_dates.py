"""DP on the time split's day counts: each count's reach, the noise on what a province sends,
the accounting, and a cutoff agreed from noised sums."""

import datetime

import numpy as np
import pytest

from client.chain import STATISTICS, Task
from client.groups import TaskGroups
from client.local import LocalWork
from client.privacy import ClientPrivacy, PrivacyError
from common import dpstats, preprocess, timesplit
from common.data import synthesize_province
from common.provinces import PROVINCES
from server.memory import MemoryChannel
from server.privacy.dp import epsilon, noise_for_epsilon, planned_releases
from tests import in_memory


class Counting(LocalWork):
    """A province that keeps what its privacy chain let out of each date question."""

    def __init__(self, raw) -> None:
        super().__init__(raw)
        self.sent: list = []

    def statistics(self, groups, parameters=None):
        outcome = super().statistics(groups, parameters)
        if groups.dates is not None:
            self.sent.append((groups.dates, outcome))
        return outcome


def test_one_row_replaced_moves_the_counts_by_at_most_root_two():
    dates = synthesize_province("hubei", 3_000, 3)["date"].to_numpy()
    years = timesplit.year_counts(dates)
    asked = timesplit.years_asked(years, 0.2)
    before = timesplit.day_counts(dates, asked)
    for moved in (np.datetime64("1995-03-01"), np.datetime64(f"{asked[-1]}-12-30")):
        other = dates.copy()
        other[0] = moved
        reach = np.linalg.norm(timesplit.year_counts(other) - years)
        assert reach <= dpstats.COUNT_SENSITIVITY + 1e-12
        if moved.astype(object).year == 1995:  # a year none of its rows is in: the bound met
            assert reach == pytest.approx(dpstats.COUNT_SENSITIVITY)
        assert np.linalg.norm(timesplit.day_counts(other, asked) - before) <= np.sqrt(2) + 1e-12
        binned = timesplit.day_counts(other, asked, 9) - timesplit.day_counts(dates, asked, 9)
        assert np.linalg.norm(binned) <= np.sqrt(2) + 1e-12  # bins of days: the same reach


def test_counts_per_bin_are_the_days_summed_bin_by_bin_and_read_within_their_bin():
    dates = synthesize_province("hubei", 3_000, 3)["date"].to_numpy()
    asked = timesplit.years_asked(timesplit.year_counts(dates), 0.2)
    days = timesplit.day_counts(dates, asked)
    for width in (1, 7, 30, 366):
        binned = timesplit.day_counts(dates, asked, width)
        assert binned.shape == (len(asked), timesplit.bins(width))
        for b in range(timesplit.bins(width)):  # the last bin holds the year's last days only
            assert np.array_equal(binned[:, b], days[:, b * width : (b + 1) * width].sum(axis=1))
    years = timesplit.year_counts(dates)
    _, daily = timesplit.agree(years, asked, days, 0.2)
    for width in (7, 30):
        binned = timesplit.day_counts(dates, asked, width)
        _, cutoff = timesplit.agree(years, asked, binned, 0.2, width)
        gap = datetime.date.fromisoformat(cutoff) - datetime.date.fromisoformat(daily)
        assert abs(gap.days) < width  # inside the cutoff's bin
    # Read linearly within it: ten rows on every day of 2020, so each bin's rows are even, and
    # the binned cutoff is the daily one (neither a bin's first nor its last day).
    even = np.repeat(np.arange("2020-01-01", "2021-01-01", dtype="datetime64[D]"), 10)
    years = timesplit.year_counts(even)
    _, daily = timesplit.agree(years, [2020], timesplit.day_counts(even, [2020]), 0.2)
    for width in (30, 61):
        binned = timesplit.day_counts(even, [2020], width)
        assert timesplit.agree(years, [2020], binned, 0.2, width)[1] == daily
    with pytest.raises(ValueError, match="not bins of 7 days"):
        timesplit.agree(years, [2020], timesplit.day_counts(even, [2020], 30), 0.2, 7)


def test_the_bins_are_single_days_in_the_clear_and_widen_with_the_noise_on_each_count():
    years = np.zeros(timesplit.YEARS)
    years[2019 - timesplit.FIRST_YEAR : 2021 - timesplit.FIRST_YEAR] = 2_000
    assert timesplit.bin_width(0.0, years, 0.2) == 1
    widths = [timesplit.bin_width(noise, years, 0.2) for noise in (0.5, 5, 50, 500, 5e6)]
    assert widths == sorted(widths) and widths[0] == 1 and widths[-1] == timesplit.YEAR_DAYS
    # 366·(noise / 2R)^⅔ for the cutoff's year's R rows: more rows, narrower bins.
    assert timesplit.bin_width(50, years, 0.2) == round(366 * (50 / 4_000) ** (2 / 3))
    assert timesplit.bin_width(50, 10 * years, 0.2) < timesplit.bin_width(50, years, 0.2)
    # R is the rows of the year the cutoff falls in: 2020's 8,000, not 2019's 2,000.
    years[2020 - timesplit.FIRST_YEAR] = 8_000
    assert timesplit.bin_width(50, years, 0.2) == round(366 * (50 / 16_000) ** (2 / 3))


def test_on_a_small_market_at_epsilon_one_the_noised_days_no_longer_put_the_cutoff_past_every_row():
    """The reproduction's tiny market (3,943 next-day rows, the last on 2020-07-07) and the noise
    its dp-local ε = 1 runs put on each count of the nine provinces' sum: read day by day, the
    cutoff often fell past every row (no province had test rows); read in bins of the width the
    noise calls for, never in the same 200 draws, and nearer the clear share of test rows."""
    provinces = [synthesize_province(p, 4_000, 7) for p in PROVINCES]
    dates = np.concatenate([preprocess.next_day_dates(raw) for raw in provinces])
    years = timesplit.year_counts(dates)
    asked = timesplit.years_asked(years, 0.2)
    sigma = noise_for_epsilon(1.0, planned_releases(2, 0, 1, time_split=True), 1e-5)
    noise = sigma * dpstats.COUNT_SENSITIVITY * 3  # nine provinces, each noising its own
    width = timesplit.bin_width(noise, years, 0.2)
    assert width > 7
    rng = np.random.default_rng(11)

    def test_shares(width: int) -> np.ndarray:
        counts = timesplit.day_counts(dates, asked, width)
        shares = []
        for _ in range(200):
            noised = np.round(counts + rng.normal(0.0, noise, counts.shape))
            try:
                _, cutoff = timesplit.agree(years, asked, noised, 0.2, width)
            except ValueError:  # the counts show no row after the cutoff
                shares.append(0.0)
            else:
                shares.append(timesplit.is_test(dates, cutoff).mean())
        return np.array(shares)

    daily, binned = test_shares(1), test_shares(width)
    assert (daily == 0).sum() > 10 and (binned > 0.05).all()
    assert np.abs(binned - 0.2).mean() < np.abs(daily - 0.2).mean() / 2


def test_the_noise_on_each_count_has_the_stated_spread_and_the_sum_is_made_whole():
    counts = np.zeros((3, timesplit.YEAR_DAYS))
    noised = dpstats.noised_counts(counts, 2.0, np.random.default_rng(4))
    assert abs(noised.std() / (2.0 * np.sqrt(2)) - 1) < 0.05
    full = 40.0 * (np.arange(noised.size) % 2).reshape(noised.shape)
    usable = dpstats.usable_years(noised + full, 2.0)
    assert (usable >= 0).all() and np.array_equal(usable, np.round(usable))
    # No count under four deviations survives: empty years stay empty, full ones keep their rows.
    assert (usable[:, ::2] == 0).all() and (usable[:, 1::2] > 20).all()


def test_a_cutoff_agreed_from_noised_counts_is_a_valid_date_near_the_clear_one():
    dates = np.concatenate(
        [synthesize_province(p, 20_000, 3)["date"].to_numpy() for p in PROVINCES]
    )
    start, cutoff = timesplit.agree_dates(dates, 0.2)
    rng = np.random.default_rng(5)
    years = dpstats.usable_years(dpstats.noised_counts(timesplit.year_counts(dates), 1.0, rng), 1)
    asked = timesplit.years_asked(years, 0.2)
    noised = dpstats.noised_counts(timesplit.day_counts(dates, asked), 1.0, rng)
    noisy_start, noisy_cutoff = timesplit.agree(years, asked, np.round(noised), 0.2)
    first, last = (
        datetime.date.fromisoformat(noisy_start),
        datetime.date.fromisoformat(noisy_cutoff),
    )
    # The first day is the first year's first day that the noise left positive.
    assert first.year == datetime.date.fromisoformat(start).year and first < last
    assert abs((last - datetime.date.fromisoformat(cutoff)).days) <= 10


def test_noised_days_short_of_their_year_put_the_cutoff_among_them_not_on_its_last_day():
    # 2020's noise took half its rows off its days: 100 rows in the year, 50 on days 0-99.
    years = np.zeros(2020 - timesplit.FIRST_YEAR + 1)
    years[-1] = 100
    days = np.zeros((1, timesplit.YEAR_DAYS))
    days[0, :100:2] = 1.0
    days[0, 1:100:2] = 0.0
    days[0, 150], days[0, 151] = -3.0, 3.0  # empty days' noise, cancelling out
    start, cutoff = timesplit.agree(years, [2020], days, 0.2)
    cut = datetime.date.fromisoformat(cutoff)
    # The 80 % quantile of the days' rows (the same share of their own 50): day 79 of 2020.
    assert cut == datetime.date(2020, 1, 1) + datetime.timedelta(days=78), cut
    assert start == "2020-01-01"
    # Clear counts are unchanged by the scaling: they add up to their year already.
    days[0, 150] = days[0, 151] = 0.0
    years[-1] = 50
    assert timesplit.agree(years, [2020], days, 0.2)[1] == "2020-03-19"


def test_under_local_dp_a_province_refuses_day_counts_asked_without_their_noise():
    work = LocalWork(synthesize_province("fujian", 3_000, 3))
    groups = TaskGroups.parse({"privacy": "dp-local", "day_counts": "years"})
    with pytest.raises(PrivacyError, match="without their noise"):
        ClientPrivacy().run(Task(STATISTICS, groups, None), work._statistics)


def test_under_heavy_noise_the_provinces_count_bins_of_days_and_the_split_still_has_test_rows(
    tmp_path,
):
    """The server's own run in memory at a noise that calls for bins: each province is asked
    for counts per bin of the width the server derives, answers in that shape, noised, and the
    cutoff agreed leaves test rows in the provinces."""
    works = {p: Counting(synthesize_province(p, in_memory.ROWS, 3)) for p in PROVINCES}
    flags = ["--model", "lr-sgd", "--rounds", "1", "--dp-noise-multiplier", "40"]
    results = in_memory.run(tmp_path, *flags, "--privacy", "dp-local", over=MemoryChannel(works))
    widths = set()
    for work in works.values():
        _, (days, binned) = work.sent
        assert days.day_counts == "days" and days.day_counts_noise == 20.0
        widths.add(days.width())
        shape = (len(days.years()), timesplit.bins(days.width()))
        assert binned.arrays["days"].shape == shape
        dates = preprocess.next_day_dates(work.raw)
        assert (
            binned.arrays["days"] != timesplit.day_counts(dates, days.years(), days.width())
        ).all()
    (width,) = widths  # the same question to every province
    assert width > 1 and results["split"]["bin_days"] == width
    cutoff = results["split"]["cutoff"]
    rows = sum(
        int(timesplit.is_test(preprocess.next_day_dates(w.raw), cutoff).sum())
        for w in works.values()
    )
    assert rows > 0
    assert "per bin of days" in results["disclosure"]["dates"]["server"]


@pytest.mark.parametrize("mode", ["dp-local", "dp-central"])
def test_the_day_counts_leave_noised_and_count_in_the_one_epsilon(tmp_path, mode):
    """The server's own run in memory: what each province sent of its day counts, the
    accountant's count, the ε and the split agreed."""
    works = {p: Counting(synthesize_province(p, in_memory.ROWS, 3)) for p in PROVINCES}
    flags = ["--model", "lr-sgd", "--rounds", "2", "--dp-noise-multiplier", "1"]
    results = in_memory.run(tmp_path, *flags, "--privacy", mode, over=MemoryChannel(works))
    for work in works.values():
        assert [asked.day_counts for asked, _ in work.sent] == ["years", "days"]
        dates = preprocess.next_day_dates(work.raw)
        for asked, outcome in work.sent:
            if asked.day_counts == "years":
                clear = timesplit.year_counts(dates)
            else:
                clear = timesplit.day_counts(dates, asked.years(), asked.width())
            assert float(outcome.arrays["count"]) == len(dates)  # n is public
            sent = outcome.arrays[asked.day_counts]
            if mode == "dp-local":  # no count leaves the province as it is
                assert asked.day_counts_noise == 0.5  # σ in units of one row's reach
                assert (sent != clear).all()
            else:  # the server holds them, and noises their sum
                assert asked.day_counts_noise is None
                assert np.array_equal(sent, clear)
    spent = results["rounds"][-1]["privacy"]
    assert spent["noisy_releases"]["noised date counts"] == 2
    assert spent["clear_releases"] == {} and np.isfinite(spent["epsilon"])
    releases = sum(spent["noisy_releases"].values())
    unit = 1.0 if mode == "dp-central" else 0.5
    assert spent["epsilon"] == pytest.approx(epsilon(unit, releases, 1e-5))
    assert spent["epsilon"] > epsilon(unit, releases - 2, 1e-5)
    split = results["split"]
    assert "bin_days" not in split  # one day a count at this noise
    start = datetime.date.fromisoformat(split["start"])
    assert start < datetime.date.fromisoformat(split["cutoff"])
    disclosed = results["disclosure"]["dates"]
    assert ("σ = 0.5·√2" if mode == "dp-local" else "σ = 1·√2") in disclosed["server"]
    assert "counted as two releases" in disclosed["server"]
    assert "noised sums" in disclosed["provinces"]
    assert np.isfinite(results["final"]["mse"])
