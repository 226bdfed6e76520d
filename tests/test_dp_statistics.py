"""DP on the statistics: public bounds, one row's reach, the noise's spread, the accounting."""

import numpy as np
import pytest

from client.groups import TaskGroups
from client.local import LocalWork
from client.privacy import PrivacyError
from common import dpbounds, dpstats, preprocess
from common.data import synthesize_province
from common.preprocess import GlobalStatistics
from common.protection import DPStatistics, Protection
from common.provinces import PROVINCES
from server.checks import check_statistics
from server.cli import parse_args
from server.memory import MemoryChannel
from server.privacy.dp import epsilon
from tests import in_memory

D = 9  # the next-day setting's eight features and the target


def bounds(d: int = D) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    lo = rng.uniform(-50, 50, d)
    return lo, lo + rng.uniform(0.1, 100, d)


def released(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The released vector of `rows` clipped into the bounds: Σu, then Σuuᵀ's upper triangle."""
    sums = dpstats.clipped_statistics(rows[:, :-1], rows[:, -1], list(lo), list(hi))
    _, total, cross = dpstats.to_unit(sums, list(lo), list(hi))
    return np.concatenate([total, cross[np.triu_indices(len(lo))]])


def test_one_row_moved_anywhere_moves_each_released_sum_by_at_most_its_sensitivity():
    lo, hi = bounds()
    rng = np.random.default_rng(1)
    total, cross = dpstats.entry_sensitivity(D)
    per_entry = np.concatenate([total, cross[np.triu_indices(D)]])
    largest = np.zeros_like(per_entry)
    for trial in range(300):
        rows = rng.uniform(lo, hi, (40, D))
        moved = rows.copy()
        corners = rng.integers(0, 2, (2, D)).astype(bool)
        if trial % 3 == 0:  # from a corner of the box to another
            rows[0], moved[0] = np.where(corners[0], lo, hi), np.where(corners[1], lo, hi)
        elif trial % 3 == 1:  # from the centre to a corner
            rows[0], moved[0] = (lo + hi) / 2, np.where(corners[0], lo, hi)
        else:  # anywhere, outside the bounds too: clipping brings it back in
            moved[0] = rng.uniform(lo - 200, hi + 200)
        change = np.abs(released(moved, lo, hi) - released(rows, lo, hi))
        assert np.all(change <= per_entry + 1e-9)
        assert np.linalg.norm(change) <= dpstats.sensitivity(D) + 1e-9
        largest = np.maximum(largest, change)
    # The bounds are reached, not just respected: Σu_i by 1, Σu_i² by ¼, Σu_iu_j by ½.
    np.testing.assert_allclose(largest, per_entry, rtol=1e-6)
    assert dpstats.sensitivity(D) == pytest.approx(np.sqrt(D + D / 16 + D * (D - 1) / 8))


def test_a_row_is_clipped_into_the_bounds_and_never_dropped():
    x, y = np.array([[-5.0, 3.0], [20.0, 1.0]]), np.array([0.5, 9.0])
    sums = dpstats.clipped_statistics(x, y, [0.0, 0.0, 0.0], [10.0, 2.0, 1.0])
    assert float(sums["count"]) == 2
    np.testing.assert_allclose(sums["sum"], [0.0 + 10.0, 2.0 + 1.0, 0.5 + 1.0])


def test_the_noise_on_every_released_entry_has_the_stated_spread():
    lo, hi = bounds()
    rows = np.random.default_rng(2).uniform(lo, hi, (500, D))
    sums = dpstats.clipped_statistics(rows[:, :-1], rows[:, -1], list(lo), list(hi))
    _, total, cross = dpstats.to_unit(sums, list(lo), list(hi))
    sigma, rng, draws = 1.5, np.random.default_rng(3), []
    for _ in range(3000):
        noised = dpstats.noised(sums, list(lo), list(hi), sigma, rng)
        assert float(noised["count"]) == 500  # n is public: never noised
        assert np.array_equal(noised["cross"], noised["cross"].T)
        _, noisy_total, noisy_cross = dpstats.to_unit(noised, list(lo), list(hi))
        upper = (noisy_cross - cross)[np.triu_indices(D)]
        draws.append(np.concatenate([noisy_total - total, upper]))
    spread = np.std(draws, axis=0)
    stated = sigma * dpstats.sensitivity(D)
    # 3000 draws: each entry's sample deviation is within 5 % of σΔ with overwhelming odds.
    np.testing.assert_allclose(spread, stated, rtol=0.05)
    assert np.abs(np.mean(draws)) < 0.05 * stated


def test_post_processing_makes_noised_sums_usable_and_keeps_n():
    province = synthesize_province("hubei", 3_000, 3)
    split = preprocess.split(province)
    ranges = dpbounds.for_columns(dpbounds.DEFAULT, split.features, "price")
    lo, hi = dpbounds.limits(ranges)
    sums = dpstats.clipped_statistics(split.x_train, split.y_train, lo, hi)
    rng = np.random.default_rng(4)
    for sigma in (0.5, 5.0, 50.0):  # noise far beyond these rows' own spread too
        noised = dpstats.noised(sums, lo, hi, sigma, rng)
        floor = dpstats.floor(sigma, len(lo), float(sums["count"]))
        kept = dpstats.usable(noised, lo, hi, floor)
        check_statistics(kept, len(split.y_train), list(ranges))  # symmetric, PSD, plausible
        mean = kept["sum"] / float(kept["count"])
        assert np.all((lo <= mean + 1e-9) & (mean <= np.add(hi, 1e-9)))
        stats = preprocess.GlobalStatistics.from_sums(list(ranges), [kept])
        assert np.all(stats.std > 0)


def statistics_task(work: LocalWork, privacy: str | None, sigma: float, **config):
    ranges = dpbounds.for_columns(dpbounds.DEFAULT, preprocess.NEXT_DAY_FEATURES, "price")
    config = {"setting": "next-day", "test_fraction": 0.2, "seed": 3, **config}
    config |= DPStatistics(dpbounds.to_text(ranges), sigma).to_config()
    config |= Protection(privacy).to_config()
    return work.statistics(TaskGroups.parse(config)).arrays


def test_a_province_clips_its_rows_and_under_local_dp_noises_its_statistics():
    raw = synthesize_province("fujian", 3_000, 3)
    work = LocalWork(raw)
    split = preprocess.split(raw)
    lo, hi = dpbounds.limits(
        dpbounds.for_columns(dpbounds.DEFAULT, preprocess.NEXT_DAY_FEATURES, "price")
    )
    close = split.features.index("close")
    move = split.y_train - split.x_train[:, close]  # a price is released as its move
    clipped = dpstats.clipped_statistics(split.x_train, move, lo, hi)
    central = statistics_task(work, None, 0.0)  # dp-central: the server adds the noise
    for name in clipped:
        np.testing.assert_array_equal(central[name], clipped[name])
    local = statistics_task(work, "dp-local", 2.0)
    assert float(local["count"]) == float(clipped["count"])
    assert not np.allclose(local["sum"], clipped["sum"], rtol=1e-6)
    assert np.array_equal(local["cross"], local["cross"].T)
    with pytest.raises(PrivacyError, match="not the columns"):
        statistics_task(work, None, 0.0, features="technical")
    with pytest.raises(PrivacyError, match="move from today's close, of a change forecast"):
        statistics_task(work, None, 0.0, forecast="change")


def test_a_price_target_is_released_as_its_move_in_the_range_of_the_change():
    columns, target = dpbounds.load(dpbounds.DEFAULT)
    next_day = dpbounds.for_columns(dpbounds.DEFAULT, preprocess.NEXT_DAY_FEATURES, "price")
    assert list(next_day)[-1] == dpbounds.MOVE and next_day[dpbounds.MOVE] == target["change"]
    assert dpbounds.move_from(next_day) == preprocess.NEXT_DAY_FEATURES.index("close")
    # The change is a move already; the paper setting's target is today's price, not a move.
    for forecast, setting in (("change", "next-day"), ("return", "next-day"), ("price", "paper")):
        ranges = dpbounds.for_columns(
            dpbounds.DEFAULT, preprocess.PAPER_FEATURES, forecast, setting
        )
        assert ranges[preprocess.TARGET] == target[forecast]
        assert dpbounds.move_from(ranges) is None
    no_close = dpbounds.for_columns(dpbounds.DEFAULT, ["price", "volume"], "price")
    assert no_close == {
        "price": columns["price"],
        "volume": columns["volume"],
        preprocess.TARGET: target["price"],
    }


def test_the_moves_sums_map_back_to_the_prices_exactly():
    province = synthesize_province("hubei", 3_000, 3)
    split = preprocess.split(province)
    ranges = dpbounds.for_columns(dpbounds.DEFAULT, split.features, "price")
    lo, hi = dpbounds.limits(ranges)
    close = dpbounds.move_from(ranges)
    x = np.clip(split.x_train, lo[:-1], hi[:-1])
    move = np.clip(split.y_train - split.x_train[:, close], lo[-1], hi[-1])
    sums = dpstats.clipped_statistics(
        split.x_train, split.y_train - split.x_train[:, close], lo, hi
    )
    price = dpstats.from_move(sums, close)
    expected = preprocess.statistics(x, move + x[:, close])
    for name in expected:
        np.testing.assert_allclose(price[name], expected[name], rtol=1e-12)
    # Noised, made usable and mapped back, the sums pass the server's checks as a price's.
    noised = dpstats.noised(sums, lo, hi, 5.0, np.random.default_rng(5))
    kept = dpstats.usable(noised, lo, hi, dpstats.floor(5.0, len(lo), float(sums["count"])))
    check_statistics(dpstats.from_move(kept, close), len(split.y_train), list(ranges))


def change_deviation(results: dict) -> float:
    """The deviation of tomorrow's price from today's close, as the run's statistics give it."""
    return GlobalStatistics.from_record(results["statistics"], "price").move_moments()[1]


@pytest.mark.parametrize("mode", ["dp-central", "dp-local"])
def test_the_noise_on_a_price_target_is_the_moves_and_spares_its_deviation(tmp_path, mode):
    """The same small noise in the unit space of a price's range (2,000 yuan wide) moves the
    variance of the change by about 10³ times σ = 0.01 yuan² over these 16,000 rows, and in
    the move's (20 yuan) by 10⁻¹ times σ: the change's deviation stays within 0.05 yuan."""
    flags = ["--model", "lr-sgd", "--rounds", "1"]
    clear = change_deviation(in_memory.run(tmp_path / "clear", *flags))
    private = [*flags, "--privacy", mode, "--dp-noise-multiplier", "0.01"]
    results = in_memory.run(tmp_path / mode, *private)
    assert abs(change_deviation(results) - clear) < 0.05
    assert "its move from today's close" in results["disclosure"]["statistics"]["server"]
    # A bounds file without a change's range releases the price in its own range.
    path = tmp_path / "bounds.toml"
    path.write_text(dpbounds.DEFAULT.read_text().replace("change = [-10.0, 10.0]\n", ""))
    results = in_memory.run(tmp_path / "price", *private, "--dp-bounds", str(path))
    assert "move" not in results["disclosure"]["statistics"]["server"]
    assert np.isfinite(results["final"]["mse"])


def test_the_statistics_are_a_counted_release_of_the_run(tmp_path):
    """The server's own run in memory: ε with the statistics is more than without them, and
    nothing is left for no finite ε to cover (the time split's counts: tests/test_dp_dates.py)."""
    flags = ["--model", "lr-sgd", "--rounds", "2", "--dp-noise-multiplier", "1"]
    plain = in_memory.run(tmp_path / "plain", "--model", "lr-sgd", "--rounds", "2")
    for mode in ("dp-central", "dp-local"):
        works = {p: LocalWork(synthesize_province(p, in_memory.ROWS, 3)) for p in PROVINCES}
        results = in_memory.run(
            tmp_path / mode, *flags, "--privacy", mode, over=MemoryChannel(works)
        )
        spent = results["rounds"][-1]["privacy"]
        assert spent["noisy_releases"]["noised statistics"] == 1
        assert "statistics" not in spent["clear_releases"]
        releases = sum(spent["noisy_releases"].values())
        unit = 1.0 if mode == "dp-central" else 0.5  # local: σ in units of 2C
        assert spent["epsilon"] == pytest.approx(epsilon(unit, releases, 1e-5))
        assert spent["epsilon"] > epsilon(unit, releases - 1, 1e-5)
        stats, clear = results["statistics"], plain["statistics"]
        # The cutoff comes from noised day counts: a few days off, its training rows with it.
        assert abs(stats["rows"] - clear["rows"]) < 0.03 * clear["rows"]
        assert stats["mean"] != clear["mean"]
        assert np.isfinite(results["final"]["mse"])
        disclosed = results["disclosure"]["statistics"]["server"]
        assert "clipped into the public bounds" in disclosed
        assert ("noises their sum" in disclosed) == (mode == "dp-central")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[columns\nclose = 1", "not TOML"),
        ("[columns]\nclose = [0, 1]\n", "needs a [target] table"),
        ("[columns]\nclose = [5, 5]\n[target]\nprice = [0, 1]\n", "needs lo < hi"),
        ("[columns]\nclose = [0, 'a']\n[target]\nprice = [0, 1]\n", "two numbers"),
        ("[columns]\nclose = [0, inf]\n[target]\nprice = [0, 1]\n", "must be finite"),
        ("[columns]\nclose = [0, 1]\n[target]\nprice = [0, 1]\n", "lacks a range for high"),
        ("[columns]\nclose = [0, 1]\n[target]\nprice = [0, 1]\n[extra]\n", "unknown table"),
    ],
)
def test_a_bounds_file_that_cannot_be_used_is_refused_before_anything_runs(
    tmp_path, capsys, text, message
):
    path = tmp_path / "bounds.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--privacy", "dp-central", "--dp-bounds", str(path)])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_bounds_must_cover_the_target_of_the_forecast_and_a_file_must_exist(tmp_path, capsys):
    path = tmp_path / "bounds.toml"
    text = dpbounds.DEFAULT.read_text().replace("change = [-10.0, 10.0]\n", "")
    path.write_text(text)
    parse_args(["--privacy", "dp-local", "--dp-bounds", str(path)])  # the price's is there
    for argv, message in (
        (["--forecast", "change", "--dp-bounds", str(path)], "lacks a range for the change"),
        (["--dp-bounds", str(tmp_path / "none.toml")], "cannot read it"),
    ):
        with pytest.raises(SystemExit):
            parse_args(["--privacy", "dp-local", *argv])
        assert message in capsys.readouterr().err
    parse_args(["--dp-bounds", str(tmp_path / "none.toml")])  # without DP no file is read
    # A file from before a price was released as its move: its change's range is the move's.
    path.write_text(text.replace("[target]\n", "[target]\nchange = [-200.0, 200.0]\n"))
    ranges = parse_args(["--privacy", "dp-local", "--dp-bounds", str(path)]).dp_ranges()
    assert ranges[dpbounds.MOVE] == (-200.0, 200.0)


def test_the_default_bounds_cover_every_feature_set_and_forecast():
    for features in ("paper", "technical"):
        for forecast in ("price", "change", "return"):
            parse_args(["--privacy", "dp-central", "--features", features, "--forecast", forecast])
