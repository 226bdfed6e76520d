"""Linear regression as arrays: fitted weights for FedAvg, or normal-equation sums for an exact fit.

The exact mode relies on least squares decomposing over rows: Σ XᵀX and Σ Xᵀy over the
provinces equal XᵀX and Xᵀy of their union, so one solve gives the centralised coefficients.
"""

from __future__ import annotations

import numpy as np

from common.models.checks import check_arrays
from common.tensors import Arrays


def fit_weights(x: np.ndarray, y: np.ndarray) -> Arrays:
    # scikit-learn costs a process most of a second to import: only the fit that uses it does.
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(x, y)
    return {
        "coef": np.asarray(model.coef_, dtype=np.float64),
        "intercept": np.asarray(model.intercept_, dtype=np.float64),
    }


def predict(weights: Arrays, x: np.ndarray) -> np.ndarray:
    """x·coef + intercept, the intercept added in place (one array a call, not two)."""
    prediction = x @ weights["coef"]
    prediction += weights["intercept"]
    return prediction


def check_weights(arrays: Arrays, n_features: int) -> None:
    check_arrays(arrays, {"coef": (n_features,), "intercept": ()})


def normal_equations(x: np.ndarray, y: np.ndarray) -> Arrays:
    """XᵀX and Xᵀy with a column of ones appended to X, for the intercept."""
    design = np.column_stack([x, np.ones(len(x))])
    return {"xtx": design.T @ design, "xty": design.T @ y}


def check_normal_equations(arrays: Arrays, n_features: int) -> None:
    size = n_features + 1
    check_arrays(arrays, {"xtx": (size, size), "xty": (size,)})


def solve_normal_equations(xtx: np.ndarray, xty: np.ndarray) -> Arrays:
    """Least-squares weights from summed normal equations (minimum-norm if singular)."""
    try:
        solution = np.linalg.solve(xtx, xty)
    except np.linalg.LinAlgError:
        solution = np.linalg.lstsq(xtx, xty, rcond=None)[0]
    return {"coef": solution[:-1].copy(), "intercept": np.asarray(solution[-1])}
