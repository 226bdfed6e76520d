"""`python -m baselines.centralised`: one process, all provinces' rows, one model.

The seed paper's centralised framework: the union of every province's training rows (each
province split as the federation splits it), scaled by the same global statistics, and scored on
every province's test rows.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from baselines import results
from baselines.data import DataOptions, Prepared, Scaling, load_frames, prepare
from baselines.models import Context, Model, ModelOptions, build_model, train
from common.crossval import fold_split
from common.preprocess import Split
from common.scores import Evaluation


def fit_union(
    model: str, options: ModelOptions, scaling: Scaling, splits: Mapping[str, Split]
) -> tuple[Model, Any]:
    """`model` fitted on the union of every split's training rows, scaled by `scaling`."""
    context = Context(options, scaling)
    spec = build_model(model, context)
    inputs = scaling.apply if spec.scaled else np.asarray
    x = inputs(np.vstack([s.x_train for s in splits.values()]))
    y = np.concatenate([s.y_train for s in splits.values()])
    fitted = train(
        spec,
        context,
        setup_all=lambda ctx: spec.setup(x, ctx),
        fit_all=lambda ctx, start: spec.fit(x, y, ctx, start),
    )
    return spec, fitted


def score(spec: Model, fitted: Any, scaling: Scaling, splits: Mapping[str, Split]) -> Evaluation:
    """Each split's test rows scored, pooled as the server pools them."""
    inputs = scaling.apply if spec.scaled else np.asarray
    return results.score_splits(lambda x: spec.predict(fitted, inputs(x)), splits)


def cross_validate(
    model: str, options: ModelOptions, prepared: Prepared, folds: int, embargo: int
) -> dict[str, Any]:
    """The federation's cross-validation on the union: fold j trains on every province's
    training rows outside its fold j and scores on those inside it, with the federation's
    scaler (server/model_selection.py); random folds in the paper setting, blocks of days an
    embargo apart forecasting tomorrow (common/crossval.py)."""
    data = prepared.options
    by_time = data.folds_by_time(embargo)
    scored = []
    for fold in range(folds):
        parts = {
            name: fold_split(s, folds, fold, data.split_seed, by_time)
            for name, s in prepared.splits.items()
        }
        spec, fitted = fit_union(model, options, prepared.scaling, parts)
        scored.append(score(spec, fitted, prepared.scaling, parts))
    return results.cross_validated(scored, by_time)


def run(
    model: str, data: DataOptions, options: ModelOptions, cv_folds: int = 0, cv_embargo: int = 5
) -> dict[str, Any]:
    """The centralised job; with `cv_folds`, its cross-validated MSE first, as the federation
    records it (`model_selection`)."""
    started = time.perf_counter()
    prepared = prepare(load_frames(data), data)
    scaling, splits = prepared.scaling, prepared.splits
    loaded = time.perf_counter()
    selection = None
    if cv_folds:
        selection = cross_validate(model, options, prepared, cv_folds, cv_embargo)
    validated = time.perf_counter()
    spec, fitted = fit_union(model, options, scaling, splits)
    trained = time.perf_counter()
    scored = score(spec, fitted, scaling, splits)
    finished = time.perf_counter()
    timings = {
        "load_seconds": loaded - started,
        **({"cv_seconds": validated - loaded} if cv_folds else {}),
        "fit_seconds": trained - validated,
        "evaluate_seconds": finished - trained,
        "total_seconds": finished - started,
    }
    train_rows = {name: len(s.y_train) for name, s in splits.items()}
    outcome = results.record(
        model,
        "centralised",
        prepared.options,
        options.describe(model),
        scored,
        train_rows,
        timings,
        train_seconds=trained - validated,
    )
    return outcome if selection is None else {**outcome, "model_selection": selection}


if __name__ == "__main__":  # the command line is baselines/centralised_cli.py
    from baselines.centralised_cli import main

    sys.exit(main())
