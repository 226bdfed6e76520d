"""`python -m baselines.centralised`: one process, all provinces' rows, one model.

The seed paper's centralised framework: the union of every province's training rows (each
province split as the federation splits it), scaled by the same global statistics, and scored on
every province's test rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from baselines import cli, results
from baselines.data import DataOptions, load_frames, prepare
from baselines.models import ALL_MODELS, Context, ModelOptions, build_model, train


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
        data,
        options.describe(model),
        scored,
        train_rows,
        timings,
        train_seconds=trained - loaded,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m baselines.centralised",
        description="Train one model on the union of all provinces' rows (the seed paper's "
        "centralised framework), with the federation's preprocessing, split and scaling; print "
        "MSE per province and overall and write a results file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cli.add_model_args(parser, ALL_MODELS)
    cli.add_tree_args(parser)
    cli.add_data_args(parser)
    parser.add_argument(
        "--results", type=Path, help="results JSON (default: runs/centralised-MODEL.json)"
    )
    args = parser.parse_args(argv)
    cli.check(parser, args)
    path = args.results or Path(f"runs/centralised-{args.model}.json")
    try:
        options = replace(cli.model_options(args), tree_settings=cli.tree_settings(parser, args))
        outcome = run(args.model, cli.data_options(args), options)
    except (ValueError, OSError) as error:  # DataError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    results.write(path, outcome)
    print(results.summary(outcome))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
