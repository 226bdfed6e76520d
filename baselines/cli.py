"""Command-line options the baseline jobs share, with the federation's defaults."""

from __future__ import annotations

import argparse

from baselines.data import DEFAULT_ROWS, DEFAULT_SEED, DataOptions
from baselines.models import MODELS, ModelOptions
from common import quantity
from common.features import FEATURE_SETS
from common.models.histgrow import TREE_MODELS
from common.preprocess import SETTINGS, features_for


def depth(text: str) -> int | None:
    """A tree depth limit; 0 or 'none' for unlimited (the paper's setting)."""
    if text.lower() in ("0", "none"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a depth limit must be positive, or 0 for none")
    return value


def add_data_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--data",
        help="folder of <province>.parquet (see `python -m common.data --help`); without it, "
        "the synthetic market the clients make by default",
    )
    add("--rows", type=int, default=DEFAULT_ROWS, help="rows of the synthetic market")
    add("--seed", type=int, default=DEFAULT_SEED, help="seed of the synthetic market")
    add(
        "--setting",
        choices=SETTINGS,
        default="next-day",
        help="next-day: tomorrow's price, split by time; paper: same-day price, random split",
    )
    add(
        "--features",
        dest="feature_set",
        choices=FEATURE_SETS,
        default="paper",
        help="paper: the paper's columns; technical: lagged returns, moving-average ratios, "
        "volatility, turnover and limit flags beside close and price (next-day only)",
    )
    add(
        "--forecast",
        choices=quantity.QUANTITIES,
        default=quantity.DEFAULT,
        help="the quantity forecast and scored, as the server's --forecast: price (Table 2's), "
        "change (tomorrow's price minus today's close) or return (over today's close, minus 1)",
    )
    add("--test-fraction", type=float, default=0.2, help="share of each province's rows for test")
    add("--split-seed", type=int, default=0, help="seed of the random split (paper setting)")


def add_model_args(parser: argparse.ArgumentParser, models: tuple[str, ...] = MODELS) -> None:
    defaults = ModelOptions()
    add = parser.add_argument
    add(
        "--model",
        choices=models,
        default="lr",
        help="lr: linear regression; rf: random forest (Table 1); svm: RBF kernel by random "
        "Fourier features + ε-insensitive linear model (the federation's); svr: the paper's "
        "exact SVR(kernel='rbf') on a subsample",
    )
    add("--trees", type=int, default=defaults.trees, help="trees of the random forest")
    add(
        "--max-depth",
        type=depth,
        default=defaults.max_depth,
        help="depth limit of the trees (0: none, as the paper; big data then makes huge trees)",
    )
    add(
        "--components",
        type=int,
        default=defaults.components,
        help="random Fourier features of the SVM",
    )
    add(
        "--svr-rows",
        type=int,
        default=defaults.svr_rows,
        help="training rows sampled for the exact SVR (its cost grows with their square)",
    )
    add(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="SVM: rounds of training then averaging (the federation's rounds)",
    )
    add(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="SVM: first step size, divided by √round later",
    )
    add("--epochs", type=int, default=defaults.epochs, help="SVM: passes over the rows per round")
    add(
        "--target",
        choices=("change", "price"),
        default=defaults.target,
        help="RF and SVMs: learn tomorrow's change from today's close (the federation's "
        "default), or the price itself (the paper)",
    )
    add("--model-seed", type=int, default=defaults.seed, help="seed of the models' randomness")


def add_tree_args(parser: argparse.ArgumentParser) -> None:
    """gbdt's and rf-hist's settings under the server's flag names and defaults."""
    for spec in TREE_MODELS.values():
        group = parser.add_argument_group(f"--model {spec.name}")
        for name in spec.settable:
            default = getattr(spec.defaults, name)
            flag = "--" + (spec.prefix + name).replace("_", "-")
            group.add_argument(
                flag, type=type(default), default=default, help=name.replace("_", " ")
            )


def tree_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Each tree model's settings from the flags; a setting out of range is a usage error."""
    try:
        return {
            name: spec.settings(
                {spec.prefix + n: getattr(args, spec.prefix + n) for n in spec.settable}
            )
            for name, spec in TREE_MODELS.items()
        }
    except ValueError as error:
        parser.error(str(error))


def data_options(args: argparse.Namespace) -> DataOptions:
    return DataOptions(
        args.data,
        args.rows,
        args.seed,
        args.setting,
        args.test_fraction,
        args.split_seed,
        args.feature_set,
        forecast=args.forecast,
    )


def model_options(args: argparse.Namespace) -> ModelOptions:
    return ModelOptions(
        trees=args.trees,
        max_depth=args.max_depth,
        components=args.components,
        svr_rows=args.svr_rows,
        seed=args.model_seed,
        rounds=args.rounds,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        target=args.target,
    )


def add_cv_args(parser: argparse.ArgumentParser) -> None:
    """The server's model-selection folds, for a baseline that cross-validates first."""
    parser.add_argument(
        "--cv-folds",
        type=int,
        default=0,
        help="cross-validate first, as the server's --cv-folds: random folds in the paper "
        "setting, blocks of days forecasting tomorrow (0: none)",
    )
    parser.add_argument(
        "--cv-embargo",
        type=int,
        default=5,
        help="days kept clear between a fold's validation days and its training rows (next-day)",
    )


def check_cv(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.cv_folds < 0 or args.cv_folds == 1:
        parser.error("--cv-folds must be 0 (no cross-validation) or at least 2")
    if args.cv_embargo < 0:
        parser.error("--cv-embargo cannot be negative")


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must lie strictly between 0 and 1")
    try:
        features_for(args.setting, args.feature_set)
    except ValueError as error:
        parser.error(f"--features {args.feature_set}: {error}")
    try:
        quantity.check(args.forecast, args.setting)
    except ValueError as error:
        parser.error(f"--forecast {args.forecast}: {error}")
    if not args.learning_rate > 0:
        parser.error("--learning-rate must be positive")
    for flag in ("rows", "trees", "components", "svr_rows", "rounds", "epochs"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
