"""The models the baselines train, each as fit → parts that merge → one predictor.

A *part* is what one set of rows contributes: the centralised job fits one part on all rows;
the Spark job fits one per province partition and merges them in a reduce step, which is why
`merge` must be associative. Merging follows the federation's table in the design notes:
linear weights (LR, and the SVM's weights over random Fourier features) are averaged by
sample count; forests are the union of trees (`common.models.forest`, the federation's own
codec), each province growing trees in proportion to its rows (`per_province`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from baselines.data import Scaling
from common.models import forest, histtree, linear, rff, svr
from common.models.ensemble import Member
from common.models.histgrow import TREE_MODELS, Grown, TreeSettings
from common.models.histparty import Party, fit_parties
from common.tensors import Arrays


@dataclass(frozen=True)
class ModelOptions:
    """Hyperparameters: the seed paper's Table 1 where it gives them, plus the limits we need."""

    trees: int = 100  # RF n_estimators
    max_depth: int | None = 16  # full-depth trees on 2.7M rows are ~200 MB each
    components: int = 500  # random Fourier features of the SVM (the federation's default)
    svr_rows: int = 20_000  # exact RBF SVR costs ~n²: each part trains on this many rows
    seed: int = 0
    rounds: int = 3  # the SVM's train-and-average passes, as the federation's rounds
    learning_rate: float = 0.05  # the SVM's first step size, divided by √round later
    epochs: int = 1  # the SVM's passes over the rows per round
    # RF and SVMs learn tomorrow's change from today's close ("change", the federation's
    # default: comparable across price levels) or the price itself ("price", as the paper);
    # under a forecast of the change or the return (DataOptions.forecast) the two are the same.
    target: str = "change"
    # gbdt's and rf-hist's settings, the federation's defaults unless changed.
    tree_settings: Mapping[str, TreeSettings] = field(
        default_factory=lambda: {name: m.defaults for name, m in TREE_MODELS.items()}
    )

    def describe(self, model: str) -> dict[str, Any]:
        """The options that matter to `model`, for results files and the report."""
        if model in self.tree_settings:
            return asdict(self.tree_settings[model])
        return {
            "lr": {},
            "rf": {
                "trees": self.trees,
                "max_depth": self.max_depth,
                "target": self.target,
                "seed": self.seed,
            },
            "svm": {
                "components": self.components,
                "rounds": self.rounds,
                "learning_rate": self.learning_rate,
                "epochs": self.epochs,
                "target": self.target,
                "seed": self.seed,
            },
            "svr": {"svr_rows": self.svr_rows, "target": self.target, "seed": self.seed},
        }[model]


@dataclass(frozen=True)
class Context:
    """What a fit may know besides its rows: options and the federation-wide statistics."""

    options: ModelOptions
    scaling: Scaling
    round: int = 1
    shared: Arrays | None = None  # sums over all rows from the model's setup pass, if any


@dataclass
class Weighted:
    """Arrays that are averaged, weighted by the rows behind them."""

    arrays: Arrays
    rows: int


def merge_weighted(a: Weighted, b: Weighted) -> Weighted:
    total = a.rows + b.rows
    arrays = {k: (a.arrays[k] * a.rows + b.arrays[k] * b.rows) / total for k in a.arrays}
    return Weighted(arrays, total)


def per_province(
    model: str, options: ModelOptions, train_rows: Mapping[str, int]
) -> dict[str, ModelOptions]:
    """Each province's options when each fits a part: a forest's trees are shared in
    proportion to training rows, at least one each, as the federation shares its forest."""
    if model != "rf":
        return dict.fromkeys(train_rows, options)
    trees = forest.shares(options.trees, list(train_rows.values()))
    return {p: replace(options, trees=n) for p, n in zip(train_rows, trees, strict=True)}


def target_frame(x: np.ndarray, context: Context) -> tuple[np.ndarray | float, float, float]:
    """Base, mean and deviation of what RF and the SVMs learn, (price − base − mean) / std,
    as the federation's trainers do (the forest uses the base alone)."""
    task = context.scaling.task
    if context.options.target == "change":
        return context.scaling.no_change(x), task["change_mean"], task["change_std"]
    return 0.0, task["target_mean"], task["target_std"]


def standardise(y: np.ndarray, x: np.ndarray, context: Context) -> np.ndarray:
    base, mean, std = target_frame(x, context)
    return (y - base - mean) / std


def restore(t: np.ndarray, x: np.ndarray, context: Context) -> np.ndarray:
    base, mean, std = target_frame(x, context)
    return t * std + mean + base


# Linear regression: sklearn's LinearRegression with the paper's (default) settings.


def fit_lr(x: np.ndarray, y: np.ndarray, context: Context, start: Any = None) -> Weighted:
    return Weighted(linear.fit_weights(x, y), len(y))


def predict_lr(part: Weighted, x: np.ndarray) -> np.ndarray:
    return linear.predict(part.arrays, x)


# Random forest: Table 1's settings, as the federation's codec grows, merges and predicts it.


@dataclass
class Members:
    """An ensemble's members as the federation's codecs hold them (trees, SVRs)."""

    members: list[Member]


def fit_rf(x: np.ndarray, y: np.ndarray, context: Context, start: Any = None) -> Members:
    o = context.options
    base = target_frame(x, context)[0]
    trees = forest.fit_forest(
        x, y - base, n_estimators=o.trees, max_depth=o.max_depth, random_state=o.seed
    )
    return Members(trees)


def merge_trees(a: Members, b: Members) -> Members:
    return Members(forest.union_of_trees([a.members, b.members]))


def trees_predictor(context: Context) -> Callable[[Members, np.ndarray], np.ndarray]:
    def predict(part: Members, x: np.ndarray) -> np.ndarray:
        return target_frame(x, context)[0] + forest.predict_forest(part.members, x)

    return predict


# SVM: the federation's own (`common.models.rff`): an RBF kernel approximated by random Fourier
# features drawn from a seed, an ε-insensitive linear model trained by preconditioned subgradient
# steps on the standardised target, its weights averaged by rows after every round. The setup
# pass sums the features' Gram matrix over all rows: the preconditioner every part uses.


def fourier_features(context: Context, n_features: int) -> rff.FourierFeatures:
    o = context.options
    return rff.FourierFeatures.draw(n_features, o.components, gamma(context, n_features), o.seed)


def gamma(context: Context, n_features: int) -> float:
    """gamma='scale' over the globally scaled features, as the federation resolves it."""
    return rff.scale_gamma(n_features, context.scaling.task["feature_variance"])


def svm_setup(x: np.ndarray, context: Context) -> Arrays:
    features = fourier_features(context, x.shape[1])
    return {"gram": rff.gram(features, x), "rows": np.asarray(float(len(x)))}


def fit_svm(x: np.ndarray, y: np.ndarray, context: Context, start: Weighted | None) -> Weighted:
    s, o = context.scaling, context.options
    assert context.shared is not None, "the SVM trains after its setup pass"
    precondition = rff.preconditioner(context.shared["gram"], int(context.shared["rows"]))
    weights = rff.train(
        fourier_features(context, x.shape[1]),
        x,
        standardise(y, x, context),
        start.arrays if start else rff.zero_weights(o.components),
        precondition,
        c=1.0,
        epsilon=0.1,
        rows=s.train_rows,
        learning_rate=o.learning_rate / np.sqrt(context.round),
        epochs=o.epochs,
        rng=np.random.default_rng(o.seed),
    )
    return Weighted(weights, len(y))


def svm_predictor(context: Context) -> Callable[[Weighted, np.ndarray], np.ndarray]:
    def predict(part: Weighted, x: np.ndarray) -> np.ndarray:
        standard = rff.predict(fourier_features(context, x.shape[1]), part.arrays, x)
        return restore(standard, x, context)

    return predict


# The paper's literal SVR(kernel='rbf') with Table 1's settings (`common.models.svr`, as the
# federation's svm-local-rbf): one per part on at most `svr_rows` of its rows, standardised
# target; the merged model predicts the mean of the parts' SVRs.


def fit_svr(x: np.ndarray, y: np.ndarray, context: Context, start: Any = None) -> Members:
    o = context.options
    member = svr.fit_svr(
        x,
        standardise(y, x, context),
        gamma=gamma(context, x.shape[1]),
        subsample=o.svr_rows,
        rng=np.random.default_rng(o.seed),
    )
    return Members([member])


def merge_members(a: Members, b: Members) -> Members:
    return Members([*a.members, *b.members])


def svr_predictor(context: Context) -> Callable[[Members, np.ndarray], np.ndarray]:
    def predict(part: Members, x: np.ndarray) -> np.ndarray:
        return restore(svr.predict_mean(part.members, x), x, context)

    return predict


# gbdt and rf-hist: the federation's own grower over one party holding the union, on the
# federation's statistics, learning tomorrow's change from today's close. There are no parts
# to merge (the federation sums histograms instead), so a job that fits parts cannot run them.


def tree_model(name: str, context: Context) -> Model:
    settings = context.options.tree_settings[name]

    scaling = context.scaling

    def fit(x: np.ndarray, y: np.ndarray, ctx: Context, start: Any = None) -> Grown:
        party = Party(x, y - scaling.no_change(x, scaled=False), settings)
        base = scaling.task["change_mean"]
        return fit_parties([party], scaling.mean, scaling.scale, base, settings)

    def predict(grown: Grown, x: np.ndarray) -> np.ndarray:
        return scaling.no_change(x, scaled=False) + histtree.predict(
            grown.base_score, grown.trees, x
        )

    return Model(name, fit, _no_merge, predict, scaled=False)


def _no_merge(a: Any, b: Any) -> Any:
    raise ValueError("histogram trees grow one ensemble from summed histograms: no parts merge")


@dataclass(frozen=True)
class Model:
    """How to train one model: `fit(x, y, context, start)` a part from the last round's merged
    part (None at first), `rounds` times; `setup`, if any, sums something over all rows first."""

    name: str
    fit: Callable[[np.ndarray, np.ndarray, Context, Any], Any]
    merge: Callable[[Any, Any], Any]
    predict: Callable[[Any, np.ndarray], np.ndarray]
    setup: Callable[[np.ndarray, Context], Arrays] | None = None
    rounds: int = 1
    # False: the model takes the rows unscaled, as the provinces' histogram trees bin them.
    scaled: bool = True


def train(
    spec: Model,
    context: Context,
    setup_all: Callable[[Context], Arrays],
    fit_all: Callable[[Context, Any], Any],
) -> Any:
    """The training loop every framework shares; it brings the passes over its rows:
    `setup_all` sums `spec.setup` over them, `fit_all` fits and merges one round's parts."""
    if spec.setup is not None:
        context = replace(context, shared=setup_all(context))
    merged = None
    for number in range(1, spec.rounds + 1):
        merged = fit_all(replace(context, round=number), merged)
    return merged


def build_model(name: str, context: Context) -> Model:
    if name == "lr":
        return Model(name, fit_lr, merge_weighted, predict_lr)
    if name == "rf":
        return Model(name, fit_rf, merge_trees, trees_predictor(context))
    if name == "svm":
        svm = svm_predictor(context)
        return Model(name, fit_svm, merge_weighted, svm, svm_setup, context.options.rounds)
    if name == "svr":
        return Model(name, fit_svr, merge_members, svr_predictor(context))
    if name in TREE_MODELS:
        return tree_model(name, context)
    raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(ALL_MODELS)}")


MODELS = ("lr", "rf", "svm", "svr")
# With the models only the centralised job trains (no parts to merge).
ALL_MODELS = (*MODELS, *TREE_MODELS)
