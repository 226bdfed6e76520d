"""The models the baselines train, each as fit → parts that merge → one predictor.

A *part* is what one set of rows contributes: the centralised job fits one part on all rows;
the Spark job fits one per province partition and merges them in a reduce step, which is why
`merge` must be associative. Merging follows the federation's table in the design notes:
linear weights (LR, and the SVM's weights over random Fourier features) are averaged by
sample count; forests are the union of trees, each province growing trees in proportion to
its rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.kernel_approximation import RBFSampler
from sklearn.svm import SVR, LinearSVR

from baselines.data import Scaling
from common.models import linear
from common.tensors import Arrays


@dataclass(frozen=True)
class ModelOptions:
    """Hyperparameters: the seed paper's Table 1 where it gives them, plus the limits we need."""

    trees: int = 100  # RF n_estimators
    max_depth: int | None = 16  # full-depth trees on 2.7M rows are ~200 MB each
    components: int = 300  # random Fourier features of the linear SVM
    svr_rows: int = 20_000  # exact RBF SVR costs ~n²: trained on a subsample
    seed: int = 0

    def describe(self, model: str) -> dict[str, Any]:
        """The options that matter to `model`, for results files and the report."""
        return {
            "lr": {},
            "rf": {"trees": self.trees, "max_depth": self.max_depth, "seed": self.seed},
            "svm": {"components": self.components, "seed": self.seed},
            "svr": {"svr_rows": self.svr_rows, "seed": self.seed},
        }[model]


@dataclass(frozen=True)
class Context:
    """What a fit may know besides its rows: options and the federation-wide statistics."""

    options: ModelOptions
    scaling: Scaling


@dataclass
class Weighted:
    """Arrays that are averaged, weighted by the rows behind them."""

    arrays: Arrays
    rows: int


@dataclass
class Ensemble:
    """Predictors whose outputs are averaged with the given weights."""

    members: list[tuple[Any, float]] = field(default_factory=list)


def merge_weighted(a: Weighted, b: Weighted) -> Weighted:
    total = a.rows + b.rows
    arrays = {k: (a.arrays[k] * a.rows + b.arrays[k] * b.rows) / total for k in a.arrays}
    return Weighted(arrays, total)


def merge_ensembles(a: Ensemble, b: Ensemble) -> Ensemble:
    return Ensemble([*a.members, *b.members])


def predict_ensemble(part: Ensemble, x: np.ndarray) -> np.ndarray:
    weights = np.array([w for _, w in part.members])
    outputs = np.stack([model.predict(x) for model, _ in part.members])
    return weights @ outputs / weights.sum()


def share(total: int, rows: int, all_rows: int) -> int:
    """This province's share of `total` (trees, sampled rows), at least one."""
    return max(1, round(total * rows / all_rows))


# Linear regression: sklearn's LinearRegression with the paper's (default) settings.


def fit_lr(x: np.ndarray, y: np.ndarray, context: Context) -> Weighted:
    return Weighted(linear.fit_weights(x, y), len(y))


def predict_lr(part: Weighted, x: np.ndarray) -> np.ndarray:
    return linear.predict(part.arrays, x)


# Random forest: Table 1's settings; each province grows its share of the trees.


def fit_rf(x: np.ndarray, y: np.ndarray, context: Context) -> Ensemble:
    o = context.options
    forest = RandomForestRegressor(
        n_estimators=share(o.trees, len(y), context.scaling.train_rows),
        criterion="squared_error",
        max_depth=o.max_depth,
        min_samples_split=2,
        max_features=1.0,
        bootstrap=True,
        random_state=o.seed,
        n_jobs=-1,
    ).fit(x, y)
    return Ensemble([(tree, 1.0) for tree in forest.estimators_])


# SVM: RBF kernel approximated by random Fourier features drawn from a shared seed (so every
# province maps rows identically, without seeing others' data), then a linear ε-insensitive
# model whose weights average. The target is standardised with the global moments: ε and C
# then mean the same on every province whatever its price level.


def feature_map(context: Context, n_features: int) -> RBFSampler:
    """The random Fourier features of an RBF kernel with gamma='scale' on standardised inputs."""
    sampler = RBFSampler(
        gamma=1.0 / n_features,
        n_components=context.options.components,
        random_state=context.options.seed,
    )
    return sampler.fit(np.zeros((1, n_features)))


def fit_svm(x: np.ndarray, y: np.ndarray, context: Context) -> Weighted:
    s = context.scaling
    z = feature_map(context, x.shape[1]).transform(x)
    model = LinearSVR(C=1.0, epsilon=0.1, dual="auto", max_iter=5000, random_state=0)
    model.fit(z, (y - s.target_mean) / s.target_std)
    arrays = {
        "coef": np.asarray(model.coef_, dtype=np.float64),
        "intercept": np.asarray(model.intercept_[0], dtype=np.float64),
        "n_features": np.asarray(float(x.shape[1])),
    }
    return Weighted(arrays, len(y))


def svm_predictor(context: Context) -> Callable[[Weighted, np.ndarray], np.ndarray]:
    def predict(part: Weighted, x: np.ndarray) -> np.ndarray:
        z = feature_map(context, x.shape[1]).transform(x)
        s = context.scaling
        return linear.predict(part.arrays, z) * s.target_std + s.target_mean

    return predict


# The paper's literal SVR(kernel='rbf') with Table 1's settings, on a subsample of the rows.


def fit_svr(x: np.ndarray, y: np.ndarray, context: Context) -> Ensemble:
    o = context.options
    rows = min(len(y), share(o.svr_rows, len(y), context.scaling.train_rows))
    pick = np.random.default_rng(o.seed).choice(len(y), rows, replace=False)
    model = SVR(kernel="rbf", degree=3, gamma="scale", coef0=0.0, tol=1e-3, C=1.0, epsilon=0.1)
    return Ensemble([(model.fit(x[pick], y[pick]), float(len(y)))])


@dataclass(frozen=True)
class Model:
    name: str
    fit: Callable[[np.ndarray, np.ndarray, Context], Any]
    merge: Callable[[Any, Any], Any]
    predict: Callable[[Any, np.ndarray], np.ndarray]


def build_model(name: str, context: Context) -> Model:
    if name == "lr":
        return Model(name, fit_lr, merge_weighted, predict_lr)
    if name == "rf":
        return Model(name, fit_rf, merge_ensembles, predict_ensemble)
    if name == "svm":
        return Model(name, fit_svm, merge_weighted, svm_predictor(context))
    if name == "svr":
        return Model(name, fit_svr, merge_ensembles, predict_ensemble)
    raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(MODELS)}")


MODELS = ("lr", "rf", "svm", "svr")
