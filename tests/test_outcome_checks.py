"""Finite but absurd numbers are refused before they reach a sum, a weight or the results."""

import numpy as np
import pytest

from common import preprocess
from common.bounded import REASON_CHARS, bounded
from common.data import synthesize_province
from common.models.checks import UpdateError
from server.checks import (
    MAX_ROWS,
    check_declared_count,
    check_outcome,
    check_rows,
    check_statistics,
    check_train_count,
)
from server.privacy.dp import counted_part, noised_part

COLUMNS = [*preprocess.NEXT_DAY_FEATURES, preprocess.TARGET]


@pytest.fixture(scope="module")
def honest():
    data = preprocess.split(synthesize_province("hubei", 20_000, 3), "next-day")
    return preprocess.statistics(data.x_train, data.y_train), len(data.y_train)


def test_honest_statistics_pass(honest):
    sums, n = honest
    check_statistics(sums, n, COLUMNS)


def lie(sums, **changes):
    return {**{k: v.copy() for k, v in sums.items()}, **changes}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s, n: lie(s, count=np.array(1e300)), "must equal num_examples"),
        (lambda s, n: lie(s, count=np.array(-1e6)), "must equal num_examples"),
        (lambda s, n: lie(s, count=np.array(1.0)), "at least 2"),
        (lambda s, n: lie(s, sum=s["sum"] * 1e9), "implausible means"),
        (lambda s, n: lie(s, cross=s["cross"] * 1e12), "implausible second moments"),
        (lambda s, n: lie(s, cross=s["cross"] * 0.5), "not positive semi-definite"),
        (lambda s, n: lie(s, cross=s["cross"] + np.triu(np.ones((9, 9)), 1)), "not symmetric"),
    ],
)
def test_statistics_no_rows_could_have_produced_are_refused(honest, change, why):
    sums, n = honest
    with pytest.raises(UpdateError, match=why):
        check_statistics(change(sums, n), n if why != "at least 2" else 1, COLUMNS)


def test_a_part_whose_count_is_not_its_declared_rows_is_refused_naming_both(honest):
    """Every part that carries a row count (statistics, day counts, in the clear or noised
    under local DP) is held to the rows declared beside it by one check."""
    sums, n = honest
    check_declared_count(sums, n, "day counts'")
    for part in (counted_part, noised_part):
        part(sums, n)
        with pytest.raises(UpdateError, match=rf" count {n + 1} must equal num_examples \({n}\)"):
            part(lie(sums, count=np.array(n + 1.0)), n)
    with pytest.raises(UpdateError, match=r"statistics count 1 .* be at least 2"):
        noised_part(lie(sums, count=np.array(1.0)), 1)


def test_counts_and_metrics_are_bounded_by_what_the_province_declared():
    check_outcome(100, {"mse": 0.04, "seconds": 1.5, "train_mse": 0.0}, declared_rows=100)
    for num_examples in (0, 101, 2**63):
        with pytest.raises(UpdateError, match="declared at Join"):
            check_outcome(num_examples, {"mse": 0.04}, declared_rows=100)
    for metrics in ({"mse": 1.7e308}, {"train_mse": 1.7e308}, {"mse": -1.0}, {"seconds": 1e300}):
        with pytest.raises(UpdateError, match="outside"):
            check_outcome(10, metrics, declared_rows=100)
    with pytest.raises(UpdateError, match="not finite"):
        check_outcome(10, {"mse": float("nan")}, declared_rows=100)
    with pytest.raises(UpdateError, match="training rows"):
        check_train_count(11, train_rows=10)
    check_train_count(10, train_rows=10)
    check_rows(MAX_ROWS)
    with pytest.raises(UpdateError, match="at most"):
        check_rows(2**63)


def test_text_from_a_participant_is_escaped_and_cut():
    name = "x" * (1 << 20)
    assert len(bounded(name)) <= REASON_CHARS and bounded(name).startswith("xxx")
    assert "more characters" in bounded(name)
    assert bounded("a\nb\x00c") == "a\\nb\\x00c"
    assert bounded("price") == "price"
