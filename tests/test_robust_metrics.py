"""--robust-metrics: a province's claimed test rows weigh no more than the median province's."""

import pytest

from common.scores import Evaluation
from server.robust_metrics import capped, median_cap
from server.strategy import ClientResult


def evaluation(*scores: tuple[str, int, float]) -> Evaluation:
    results = [ClientResult(p, n, {"mse": mse}) for p, n, mse in scores]
    return Evaluation.weighted(results)


def test_a_liar_claiming_a_billion_test_rows_weighs_as_the_median_province():
    honest = [("hubei", 4000, 0.04), ("fujian", 6000, 0.05)]
    lied = evaluation(*honest, ("shanghai", 10**9, 0.0))
    assert lied.mse < 1e-3  # the default weighting: the liar's MSE is the federation's
    robust = capped(lied)
    assert robust.mse == pytest.approx((4000 * 0.04 + 6000 * 0.05 + 6000 * 0.0) / 16000)
    assert robust.per_client == lied.per_client  # each province's own record is untouched


def test_equal_provinces_score_as_before_and_a_large_one_counts_as_the_median():
    even = evaluation(("hubei", 5000, 0.04), ("fujian", 5000, 0.06), ("anhui", 5000, 0.05))
    assert capped(even).mse == pytest.approx(even.mse)
    uneven = evaluation(("hubei", 1000, 0.02), ("fujian", 2000, 0.04), ("anhui", 9000, 0.08))
    assert capped(uneven).mse == pytest.approx((1000 * 0.02 + 2000 * 0.04 + 2000 * 0.08) / 5000)
    assert capped(uneven).mse < uneven.mse


def test_the_cap_is_the_lower_median():
    assert median_cap([7]) == 7
    assert median_cap([10**9, 4000]) == 4000
    assert median_cap([3, 1, 2, 10**9]) == 2
