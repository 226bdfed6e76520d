"""`python -m baselines.centralised`: one process, all provinces' rows, one model.

The seed paper's centralised framework: the union of every province's training rows (each
province split as the federation splits it), scaled by the same global statistics, and scored on
every province's test rows.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from baselines import results
from baselines.data import DataOptions, load_frames, prepare
from baselines.models import Context, ModelOptions, build_model, train


def run(model: str, data: DataOptions, options: ModelOptions) -> dict[str, Any]:
    started = time.perf_counter()
    prepared = prepare(load_frames(data), data)
    scaling, splits = prepared.scaling, prepared.splits
    context = Context(options, scaling)
    spec = build_model(model, context)
    inputs = scaling.apply if spec.scaled else np.asarray
    x = inputs(np.vstack([s.x_train for s in splits.values()]))
    y = np.concatenate([s.y_train for s in splits.values()])
    loaded = time.perf_counter()

    fitted = train(
        spec,
        context,
        setup_all=lambda ctx: spec.setup(x, ctx),
        fit_all=lambda ctx, start: spec.fit(x, y, ctx, start),
    )
    trained = time.perf_counter()

    scored = results.evaluation(
        (name, results.scores(spec.predict(fitted, inputs(s.x_test)), s), len(s.y_test))
        for name, s in splits.items()
    )
    finished = time.perf_counter()
    timings = {
        "load_seconds": loaded - started,
        "fit_seconds": trained - loaded,
        "evaluate_seconds": finished - trained,
        "total_seconds": finished - started,
    }
    train_rows = {name: len(s.y_train) for name, s in splits.items()}
    return results.record(
        model,
        "centralised",
        prepared.options,
        options.describe(model),
        scored,
        train_rows,
        timings,
        train_seconds=trained - loaded,
    )


if __name__ == "__main__":  # the command line is baselines/centralised_cli.py
    from baselines.centralised_cli import main

    sys.exit(main())
