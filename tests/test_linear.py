import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from common.models import linear
from common.models.checks import UpdateError


def correlated_data(rng, n):
    base = rng.normal(size=n)
    x = np.column_stack(
        [base + rng.normal(scale=1e-3, size=n) for _ in range(5)] + [rng.normal(size=n)]
    )
    y = x @ np.arange(1.0, 7.0) + 3.0 + rng.normal(scale=0.1, size=n)
    return x, y


def test_summed_normal_equations_give_the_centralised_fit():
    rng = np.random.default_rng(1)
    parts = [correlated_data(rng, n) for n in (100, 500, 2000)]
    summed = [linear.normal_equations(x, y) for x, y in parts]
    exact = linear.solve_normal_equations(
        sum(s["xtx"] for s in summed), sum(s["xty"] for s in summed)
    )
    central = LinearRegression().fit(
        np.vstack([x for x, _ in parts]), np.concatenate([y for _, y in parts])
    )
    np.testing.assert_allclose(exact["coef"], central.coef_, rtol=1e-6)
    np.testing.assert_allclose(exact["intercept"], central.intercept_, rtol=1e-6)


def test_singular_normal_equations_fall_back_to_least_squares():
    x = np.column_stack([np.arange(5.0), np.arange(5.0)])
    eq = linear.normal_equations(x, 2 * np.arange(5.0))
    weights = linear.solve_normal_equations(eq["xtx"], eq["xty"])
    np.testing.assert_allclose(linear.predict(weights, x), 2 * np.arange(5.0), atol=1e-8)


def test_local_weights_predict_like_sklearn():
    rng = np.random.default_rng(2)
    x, y = correlated_data(rng, 300)
    weights = linear.fit_weights(x, y)
    np.testing.assert_allclose(linear.predict(weights, x), LinearRegression().fit(x, y).predict(x))
    linear.check_weights(weights, 6)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"coef": np.zeros(6)}, "missing"),
        ({"coef": np.zeros(6), "intercept": np.array(0.0), "x": np.zeros(1)}, "unexpected"),
        ({"coef": np.zeros(5), "intercept": np.array(0.0)}, "shape"),
        ({"coef": np.zeros(6, dtype=np.float32), "intercept": np.array(0.0)}, "dtype"),
        ({"coef": np.array([np.nan] + [0.0] * 5), "intercept": np.array(0.0)}, "NaN"),
        ({"coef": np.zeros(6), "intercept": np.array(np.inf)}, "NaN or infinite"),
    ],
)
def test_malformed_weights_are_refused(arrays, message):
    with pytest.raises(UpdateError, match=message):
        linear.check_weights(arrays, 6)
