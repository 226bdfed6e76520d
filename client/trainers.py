"""What a province does with its rows for each model: train from the global parameters, predict.

Trainers know scikit-learn and numpy, never gRPC. Hyperparameters arrive in the task's settings
as parsed on its arrival (client/groups.py; common/hyperparameters.py says what they mean),
global numbers from the federation's statistics with them (common.settings.TaskContext).
Whatever a model learns, it answers in the forecast quantity's units (common/quantity.py).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from client import histograms
from client.groups import TaskGroups
from client.optim import LinearSGD, local_steps
from common import quantity
from common.model_settings import ForestSettings, MemberSeed, SvmSettings
from common.models import forest, histtree, leafnoise, linear, rff, svr
from common.models.histgrow import Query, TreeSettings
from common.protection import DPNoise, Protection
from common.registry import model_spec
from common.settings import DataSettings, RoundNumber, TaskContext
from common.tensors import Arrays

Fit = Callable[[np.ndarray, np.ndarray, Arrays | None, TaskGroups], Arrays]
Predict = Callable[[Arrays, np.ndarray, TaskGroups], np.ndarray]
PredictMany = Callable[[list[Arrays], np.ndarray, TaskGroups], Iterator[np.ndarray]]


@dataclass(frozen=True)
class Trainer:
    fit: Fit
    predict: Predict
    # False where the update is not a model (normal-equation sums): no training MSE then.
    update_is_model: bool = True
    # False for trees: they split on raw values, and scaling would change nothing.
    scaled: bool = True
    # Gradient trainers say how many local steps a round takes them (FedNova needs τ_i).
    local_steps: Callable[[int, TaskGroups], int] | None = None
    # ... and the local objective under given weights (q-FedAvg's F_i).
    local_loss: Callable[[Arrays, np.ndarray, np.ndarray, TaskGroups], float] | None = None
    # Predictions of many candidate models at once, where they share costly work.
    predict_candidates: PredictMany | None = None


def close(x: np.ndarray, groups: TaskGroups, scaled: bool) -> np.ndarray:
    """Today's close in yuan, from raw or globally scaled rows."""
    column = x[:, groups.need(DataSettings).columns().index("close")]
    if not scaled:
        return column
    context = groups.need(TaskContext)
    return column * context.close_scale + context.close_mean


def no_change(x: np.ndarray, groups: TaskGroups, scaled: bool) -> np.ndarray:
    """The forecast quantity's value if tomorrow's price were today's close (today's close for
    the price, zero for a change or a return): what a model that learns a move starts from."""
    return quantity.no_change(close(x, groups, scaled), groups.need(DataSettings).forecast)


# A tree or an RBF machine predicts only values near those it was trained on, so a province's
# model fails on price levels it never saw. Tomorrow's change from today's close (target
# 'change') is comparable across price levels; 'price' is the price itself, as the paper. Under
# --forecast change or return the target is a move already, and the two are the same.


def forest_base(x: np.ndarray, groups: TaskGroups) -> np.ndarray | float:
    target = groups.need(ForestSettings).rf_target
    return no_change(x, groups, scaled=False) if target == "change" else 0.0


def fit_forest(x: np.ndarray, y: np.ndarray, shared: Arrays | None, groups: TaskGroups) -> Arrays:
    """Table 1's forest; under dp-local first this province's sketch of its rows, which the
    federation sums into bin edges as gbdt's (the protection chain noises it), then trees drawn
    from the seed alone, split at those edges only (`shared`) to `ForestSettings.drawn_depth`,
    each leaf filled with the count and mean of all its rows' targets clipped to ±C
    (common/models/leafnoise.py; the chain noises them)."""
    dp_local = groups.need(Protection).privacy == "dp-local"
    if dp_local and groups.tree_step is not None and groups.tree_step.tree_step == "sketch":
        told, max_bins = groups.tree_step, TreeSettings().max_bins
        query = Query.from_wire(told, 0.0, shared or {}, x.shape[1], max_bins)
        return {"sketch": histtree.sketch(x, query.mean, query.std)}
    seed, settings = groups.need(MemberSeed).random_state, groups.need(ForestSettings)
    growing = settings.tree_growing(seed)
    target = y - forest_base(x, groups)
    if not dp_local:
        return forest.forest_to_arrays(forest.fit_forest(x, target, **growing))
    edges = histtree.unpack_edges(shared or {}, x.shape[1], TreeSettings().max_bins)
    target = leafnoise.clipped(target, groups.need(DPNoise).dp_clip)
    drawn = np.random.default_rng(seed)  # public, as the shapes it draws: no secret to keep
    trees = (
        forest.drawn_tree(edges, settings.drawn_depth, drawn)
        for _ in range(growing["n_estimators"])
    )
    return forest.forest_to_arrays(leafnoise.refit(tree, x, target) for tree in trees)


def predict_forest(arrays: Arrays, x: np.ndarray, groups: TaskGroups) -> np.ndarray:
    trees = forest.forest_from_arrays(arrays, x.shape[1])
    return forest_base(x, groups) + forest.predict_forest(trees, x)


# Histogram trees (gbdt, rf-hist) learn the change from today's close (the target itself when it
# is a move); their tasks are questions.


def tree_answer(
    x: np.ndarray, y: np.ndarray, question: Arrays | None, groups: TaskGroups
) -> Arrays:
    return histograms.answer(x, lambda: y - no_change(x, groups, scaled=False), question, groups)


def predict_trees(arrays: Arrays, x: np.ndarray, groups: TaskGroups) -> np.ndarray:
    return no_change(x, groups, scaled=False) + histograms.predict(arrays, x)


_Value = TypeVar("_Value")


class _Derived:
    """Arrays that every round derives from a province's rows in the same way, derived once.

    A value is kept while its rows are the very same read-only arrays that own their memory
    (LocalWork keeps its splits and scaled rows so, for as long as the settings and the scaler
    stay) and the numbers it is derived with are the same; rows that can be written to, or are
    views on memory that might be, are derived from anew. The rows are held beside their
    value, so no id in a key can name another array meanwhile. Room for a few values of each
    of the nine provinces an in-memory federation runs in one process.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._kept: dict[tuple, tuple[tuple[np.ndarray, ...], Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, rows: tuple[np.ndarray, ...], derive: Callable[[], _Value]) -> _Value:
        if any(r.flags.writeable or not r.flags.owndata for r in rows):
            return derive()
        full = (*key, *map(id, rows))
        with self._lock:
            if full not in self._kept:
                value = derive()
                if isinstance(value, np.ndarray):
                    value.flags.writeable = False
                while len(self._kept) >= self.size:
                    self._kept.pop(next(iter(self._kept)))
                self._kept[full] = (rows, value)
            return self._kept[full][1]


# One for the province's process: the trainers' targets, and its evaluation's baselines
# (client/local.py).
DERIVED = _Derived()


def target_frame(
    x: np.ndarray, groups: TaskGroups, target: str | None = None
) -> tuple[np.ndarray | float, float, float]:
    """Base, mean and deviation of a standardised target, (target − base − mean) / std.

    Models that learn by small steps learn it standardised: weights of order one, one step
    size for every market, whatever its price level. The target is 'change' (from the no-change
    value) or 'price' (the forecast quantity itself); the SVMs' `svm_target` unless given.
    """
    context = groups.need(TaskContext)
    if (target or groups.need(SvmSettings).svm_target) == "change":
        data = groups.need(DataSettings)
        key = ("base", data.columns().index("close"), data.forecast)
        key += (context.close_scale, context.close_mean)
        base = DERIVED.get(key, (x,), lambda: no_change(x, groups, scaled=True))
        return base, context.change_mean, context.change_std
    return 0.0, context.target_mean, context.target_std


def _frame_of(
    x: np.ndarray, groups: TaskGroups, target: str | None
) -> tuple[np.ndarray | float, float, float, tuple, tuple[np.ndarray, ...]]:
    """target_frame, with what a value derived from it is kept by: the key and the rows."""
    base, mean, std = target_frame(x, groups, target)
    key = (target or groups.need(SvmSettings).svm_target, mean, std)
    if isinstance(base, np.ndarray):
        return base, mean, std, key, (x, base)
    return base, mean, std, (*key, base), (x,)


def standardise(
    y: np.ndarray, x: np.ndarray, groups: TaskGroups, target: str | None = None
) -> np.ndarray:
    """The standardised target of rows `x`, derived once for rows that stay the same."""
    base, mean, std, key, rows = _frame_of(x, groups, target)
    return DERIVED.get(("standardised", *key), (*rows, y), lambda: (y - base - mean) / std)


def restore(
    t: np.ndarray, x: np.ndarray, groups: TaskGroups, target: str | None = None
) -> np.ndarray:
    """base + mean + t·std, the same to the last bit: base + mean is derived once for rows that
    stay the same, and t·std takes it in place."""
    base, mean, std, key, rows = _frame_of(x, groups, target)
    restored = t * std
    restored += DERIVED.get(("offset", *key), rows, lambda: base + mean)
    return restored


def gamma(n_features: int, groups: TaskGroups) -> float:
    """The RBF width: a number, or 'scale' from the federation's feature variance."""
    width = groups.need(SvmSettings).svm_gamma
    if width == "scale":
        return rff.scale_gamma(n_features, groups.need(TaskContext).feature_variance)
    return float(width)


def fourier_features(n_features: int, groups: TaskGroups) -> rff.FourierFeatures:
    svm = groups.need(SvmSettings)
    return rff.FourierFeatures.draw(
        n_features, svm.svm_features, gamma(n_features, groups), svm.svm_seed
    )


# The Gram of a client's rows is a round's costliest step and the same every round: keep a few.
_PRECONDITIONERS: dict[tuple[str, bytes], np.ndarray] = {}


def local_preconditioner(features: rff.FourierFeatures, x: np.ndarray) -> np.ndarray:
    key = (hashlib.sha1(np.ascontiguousarray(x)).hexdigest(), features.weights.tobytes())
    if key not in _PRECONDITIONERS:
        while len(_PRECONDITIONERS) >= 4:
            _PRECONDITIONERS.pop(next(iter(_PRECONDITIONERS)))
        _PRECONDITIONERS[key] = rff.preconditioner(rff.gram(features, x), len(x))
    return _PRECONDITIONERS[key]


def round_rng(groups: TaskGroups) -> np.random.Generator:
    seed = groups.need(SvmSettings).svm_seed
    return np.random.default_rng([seed, groups.need(RoundNumber).round])


def fit_svm(x: np.ndarray, y: np.ndarray, start: Arrays | None, groups: TaskGroups) -> Arrays:
    features = fourier_features(x.shape[1], groups)
    svm = groups.need(SvmSettings)
    return rff.train(
        features,
        x,
        standardise(y, x, groups),
        start or rff.zero_weights(features.n_components),
        local_preconditioner(features, x),
        c=svm.svm_c,
        epsilon=svm.svm_epsilon,
        rows=groups.need(TaskContext).train_rows,
        # Decaying steps let the averaged weights settle over the rounds.
        learning_rate=svm.svm_learning_rate / np.sqrt(groups.need(RoundNumber).round),
        epochs=svm.svm_epochs,
        rng=round_rng(groups),
    )


def predict_svm(arrays: Arrays, x: np.ndarray, groups: TaskGroups) -> np.ndarray:
    return restore(rff.predict(fourier_features(x.shape[1], groups), arrays, x), x, groups)


def svm_candidates(
    candidates: list[Arrays], x: np.ndarray, groups: TaskGroups
) -> Iterator[np.ndarray]:
    """The svm's candidates share one random feature map: the rows' costly cosines are
    computed once for all of them, not once per candidate as `predict_svm` would."""
    z = fourier_features(x.shape[1], groups).transform(x)
    for candidate in candidates:
        yield restore(z @ candidate["coef"] + candidate["intercept"], x, groups)


def fit_local_rbf(
    x: np.ndarray, y: np.ndarray, _global: Arrays | None, groups: TaskGroups
) -> Arrays:
    svm = groups.need(SvmSettings)
    member = svr.fit_svr(
        x,
        standardise(y, x, groups),
        gamma=gamma(x.shape[1], groups),
        subsample=svm.svm_subsample,
        rng=round_rng(groups),
        C=svm.svm_c,
        epsilon=svm.svm_epsilon,
    )
    return svr.SVRS.pack([member])


def predict_local_rbf(arrays: Arrays, x: np.ndarray, groups: TaskGroups) -> np.ndarray:
    return restore(svr.predict_mean(svr.SVRS.unpack(arrays, x.shape[1]), x), x, groups)


# One trainer per process: the process is the province, and SCAFFOLD's c_i lives in it.
_SGD = LinearSGD()


# lr-sgd learns tomorrow's change from today's close, standardised: the same linear model as
# one on the price, but zero weights already predict today's close, and the steps are small.
def fit_sgd(x: np.ndarray, y: np.ndarray, start: Arrays | None, groups: TaskGroups) -> Arrays:
    return _SGD.fit(x, standardise(y, x, groups, "change"), start, groups)


def predict_sgd(weights: Arrays, x: np.ndarray, groups: TaskGroups) -> np.ndarray:
    return restore(linear.predict(weights, x), x, groups, "change")


def sgd_loss(weights: Arrays, x: np.ndarray, y: np.ndarray, groups: TaskGroups) -> float:
    """½·MSE of the standardised change, what the local steps minimise.

    q-FedAvg weighs F_i against ‖Δw_i‖² with L = 1/η, both in this loss's units; an MSE in
    yuan² is this loss times 2·change_std², which would tilt that balance.
    """
    residual = linear.predict(weights, x) - standardise(y, x, groups, "change")
    return 0.5 * float(np.mean(residual**2))


# Each model's trainer, named by its registry entry (common/registry.py).
LR = Trainer(
    lambda x, y, _global, _groups: linear.fit_weights(x, y),
    lambda weights, x, _groups: linear.predict(weights, x),
)
LR_EXACT = Trainer(
    lambda x, y, _global, _groups: linear.normal_equations(x, y),
    lambda weights, x, _groups: linear.predict(weights, x),
    update_is_model=False,
)
LR_SGD = Trainer(fit_sgd, predict_sgd, local_steps=local_steps, local_loss=sgd_loss)
FOREST = Trainer(fit_forest, predict_forest, scaled=False)
HISTOGRAM_TREES = Trainer(tree_answer, predict_trees, update_is_model=False, scaled=False)
SVM = Trainer(fit_svm, predict_svm, predict_candidates=svm_candidates)
LOCAL_RBF = Trainer(fit_local_rbf, predict_local_rbf)


def trainer_for(model: str) -> Trainer:
    """The registered model's trainer; ValueError naming the models there are if there is none."""
    return model_spec(model).client_trainer()
