"""Every model's hyperparameters: their names, how each is read from text, default and meaning.

Each is a flag of `python -m server` (rf_max_depth: --rf-max-depth, with the
FEDSTOCK_RF_MAX_DEPTH fallback) and travels to the clients in the task config under its name.
Defaults are the seed paper's Table 1. A value that cannot be read raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from common.models.histgrow import TREE_MODELS
from common.wire import ConfigScalar


def _number(
    cast: Callable[[str], float], what: str, ok: Callable[[float], bool]
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            value = math.nan
        if not ok(value):
            raise ValueError(f"{text!r} is not {what}")
        return value

    return parse


def _choice(*names: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise ValueError(f"{text!r} is not one of: {', '.join(names)}")
        return text

    return parse


_count = _number(int, "a positive integer", lambda v: v >= 1)
_whole = _number(int, "a non-negative integer", lambda v: v >= 0)
_positive = _number(float, "a positive number", lambda v: 0 < v < math.inf)
_non_negative = _number(float, "a non-negative number", lambda v: 0 <= v < math.inf)
_fraction = _number(float, "a fraction in (0, 1]", lambda v: 0 < v <= 1)
_bins = _number(int, "an integer in [2, 65536]", lambda v: 2 <= v <= 65536)
_weight = _number(float, "a number of at least 1", lambda v: 1 <= v < math.inf)
_open_fraction = _number(float, "a fraction in (0, 1)", lambda v: 0 < v < 1)


def _flag(text: str) -> bool:
    return _choice("true", "false")(text.lower()) == "true"


def _gamma(text: str) -> str | float:
    return text if text == "scale" else _positive(text)


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[str], ConfigScalar]
    default: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return self.name.upper()


# Histogram trees' settings (common/models/histgrow.py): how each is read, and what it means.
TREE_SETTINGS: dict[str, tuple[Callable[[str], ConfigScalar], str]] = {
    "trees": (_count, "trees grown (boosting rounds, or the forest's trees)"),
    "learning_rate": (_fraction, "shrinkage η of each tree"),
    "max_depth": (_count, "deepest level of a tree"),
    "max_bins": (_bins, "bins per feature, edges at the quantiles of the summed sketch"),
    "reg_lambda": (_non_negative, "L2 regularisation λ of leaf values"),
    "min_child_weight": (_weight, "fewest (sampled or bootstrap-weighted) rows on either side"),
    "subsample": (_fraction, "share of rows each tree is grown on"),
    "early_stopping": (
        _whole,
        "stop once this many trees have not bettered the federated validation MSE (0: grow "
        "them all); the best ensemble is kept",
    ),
    "validation_fraction": (_open_fraction, "share of training rows held out for early stopping"),
    "max_features": (_fraction, "share of features each split may choose from"),
    "seed": (_whole, "seed of subsamples, hold-outs, bootstraps and feature draws"),
}


def _tree_options(model: str) -> tuple[Option, ...]:
    spec = TREE_MODELS[model]
    return tuple(
        Option(spec.prefix + name, parse, str(getattr(spec.defaults, name)), text)
        for name in spec.settable
        for parse, text in [TREE_SETTINGS[name]]
    )


OPTIONS: dict[str, tuple[Option, ...]] = {
    "random forest (--model rf)": (
        Option(
            "rf_n_estimators", _count, "100", "trees each province grows (Table 1: n_estimators)"
        ),
        Option(
            "rf_global_trees",
            _count,
            "100",
            "trees in the global forest, taken from the provinces by --rf-allocation (at least "
            "one each; never more than a province grew)",
        ),
        Option(
            "rf_allocation",
            _choice("proportional", "equal"),
            "proportional",
            "share the global forest's trees in proportion to each province's training rows, or "
            "equally",
        ),
        Option(
            "rf_grow",
            _choice("all", "share"),
            "all",
            "all: every province grows --rf-n-estimators trees (Table 1) and the server keeps "
            "its share; share: each province grows only the trees the global forest keeps, the "
            "same forest for a fraction of the work and bytes",
        ),
        Option(
            "rf_criterion",
            _choice("squared_error", "friedman_mse", "absolute_error", "poisson"),
            "squared_error",
            "split quality (Table 1)",
        ),
        Option(
            "rf_min_samples_split",
            _number(int, "an integer of at least 2", lambda v: v >= 2),
            "2",
            "rows a node needs to be split (Table 1)",
        ),
        Option("rf_max_features", _fraction, "1.0", "share of features tried per split (Table 1)"),
        Option("rf_bootstrap", _flag, "true", "grow each tree on a bootstrap sample (Table 1)"),
        Option(
            "rf_max_depth",
            _whole,
            "0",
            "deepest level of a tree; 0 grows until leaves are pure, as Table 1 (one such tree "
            "on 2.16M rows is ~200 MB: mind the memory)",
        ),
        Option(
            "rf_min_samples_leaf",
            _count,
            "1",
            "fewest rows in a leaf; at 1 (Table 1) a full-depth tree's leaf holds one training "
            "row's target; under --privacy dp-local the floor of a leaf's noised row count",
        ),
        Option(
            "rf_bins_per_decade",
            _whole,
            "32",
            "split only at the edges of a grid fixed in advance, 0 and ±10^(k/B), B to a decade, "
            "so no threshold is a training value; 0: Table 1's exact thresholds, midpoints of "
            "adjacent training values",
        ),
        Option(
            "rf_target",
            _choice("change", "price"),
            "change",
            "change: trees learn tomorrow's change from today's close, comparable across price "
            "levels; price: the price itself, as the paper (a union of trees then fails on the "
            "price levels a province never saw)",
        ),
    ),
    "support vector machine (--model svm, svm-local-rbf)": (
        Option(
            "svm_target",
            _choice("change", "price"),
            "change",
            "change: learn tomorrow's change from today's close, comparable across price "
            "levels; price: the price itself, as the paper (an RBF machine fails on price "
            "levels it never saw). Standardised by its global mean and deviation either way",
        ),
        Option("svm_c", _positive, "1.0", "SVR regularisation C (Table 1)"),
        Option(
            "svm_epsilon",
            _non_negative,
            "0.1",
            "half-width of the ε-insensitive tube, in standard deviations of the target (Table 1)",
        ),
        Option(
            "svm_gamma",
            _gamma,
            "scale",
            "RBF width; scale: 1 / (features × variance of the scaled features), from the "
            "federation's statistics (Table 1)",
        ),
        Option(
            "svm_features",
            _count,
            "500",
            "random Fourier features approximating the RBF kernel (svm)",
        ),
        Option("svm_seed", _whole, "0", "seed of the random features and of local shuffling"),
        Option(
            "svm_learning_rate",
            _positive,
            "0.05",
            "step size of local training in round 1, divided by √round later (svm)",
        ),
        Option("svm_epochs", _count, "1", "local passes over a province's rows per round (svm)"),
        Option(
            "svm_subsample",
            _count,
            "20000",
            "rows of each province the exact RBF SVR is fitted on (svm-local-rbf)",
        ),
    ),
    "gradient-boosted trees from summed histograms (--model gbdt)": _tree_options("gbdt"),
    "random forest from summed histograms (--model rf-hist)": _tree_options("rf-hist"),
}
ALL_OPTIONS = {option.name: option for group in OPTIONS.values() for option in group}


def defaults() -> dict[str, ConfigScalar]:
    return {name: option.parse(option.default) for name, option in ALL_OPTIONS.items()}
