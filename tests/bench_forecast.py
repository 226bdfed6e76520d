"""`make bench-forecast`: what each model learns beyond the naive forecast, on the default market.

For lr, lr-exact, rf, svm, gbdt and rf-hist, federated (a server and nine client processes),
centralised and on Spark (MLlib's GBTRegressor and RandomForestRegressor for the histogram
trees), on the same Parquet files, split and scaling: the test MSE beside persistence, last close
and the market's own oracle, the skill against the naive forecast, the share of the learnable
signal found (achieved skill), and each federated MSE against the centralised MSE of the same
model. Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from baselines import centralised, spark
from baselines.data import DataOptions, load_frames, prepare, write_synthetic
from baselines.reproduce import SCALES, Progress, Scale, run_federation
from common import forecast, preprocess, quantity
from common.data.facts import stylised_facts
from common.data.synthetic import DEFAULT_SEED
from common.models.histgrow import TREE_MODELS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MODELS = ("lr", "lr-exact", "rf", "svm", "gbdt", "rf-hist")
# The centralised job's least squares is already exact; Spark's LR averages the provinces' fits.
BASELINE_MODELS = {"lr-exact": "lr"}
FRAMEWORKS = ("federated", "centralised", "spark")


def run_all(
    scale_name: str,
    out: Path,
    frameworks: tuple[str, ...],
    master: str,
    forecast_quantity: str = quantity.DEFAULT,
    models: tuple[str, ...] = MODELS,
) -> dict[str, Any]:
    """Every (model, framework)'s results document, by 'framework model'."""
    scale = SCALES[scale_name]
    out.mkdir(parents=True, exist_ok=True)
    data = DataOptions(
        data=str(write_synthetic(out / "data", scale.rows, DEFAULT_SEED)),
        rows=scale.rows,
        forecast=forecast_quantity,
    )
    print(quantity.label(forecast_quantity))
    frames = load_frames(data)
    facts = stylised_facts(pd.concat(frames.values(), ignore_index=True))
    print("the market's daily returns: " + ", ".join(f"{k} {v:.4g}" for k, v in facts.items()))
    print(naive_directions(prepare(frames, data).splits.values()))
    progress = Progress(len(models) * len(frameworks))
    runs: dict[str, Any] = {}
    session = spark.start_session(master, scale.driver_memory) if "spark" in frameworks else None
    try:
        for model in models:
            for framework in frameworks:
                with progress.step(f"{framework} {model}") as shown:
                    try:
                        run = _job(framework, model, data, scale, out, progress, session)
                    except (RuntimeError, ValueError) as error:
                        shown["status"] = f"failed: {error}"
                        continue
                    runs[f"{framework} {model}"] = run
                    shown["mse"] = run["final"]["mse"]
                    # Written after every run: a long bench that stops keeps what it measured.
                    (out / "forecast.json").write_text(json.dumps(runs, indent=1))
    finally:
        if session is not None:
            session.stop()
    return runs


def naive_directions(splits: Iterable[preprocess.Split]) -> str:
    """How many moves the reference forecasts call right on the test rows, to read a model's by."""
    splits = list(splits)
    truth = np.concatenate([s.y_test for s in splits])
    reference = {
        name: np.concatenate([s.reference_test[name] for s in splits])
        for name in splits[0].reference_test
    }
    called = {
        name: forecast.scores(values, truth, reference)["direction"]
        for name, values in reference.items()
    }
    return "moves called right on the test rows: " + ", ".join(
        f"{name} {share:.1%}" for name, share in called.items()
    )


def _job(
    framework: str,
    model: str,
    data: DataOptions,
    scale: Scale,
    out: Path,
    progress: Progress,
    session: SparkSession | None,
) -> dict[str, Any]:
    """One run's results document: the federation, the centralised job or the Spark job."""
    own = BASELINE_MODELS.get(model, model)
    if framework == "federated":
        return run_federation(model, data, scale, out, progress)
    if framework == "centralised":
        return centralised.run(own, data, scale.options)
    engine = "mllib" if own in TREE_MODELS else "sklearn"
    return spark.run(session, own, data, scale.options, engine)


def table(runs: dict[str, Any]) -> list[str]:
    """One line per run, the naive and oracle forecasts first."""
    first = next(iter(runs.values()))["final"]
    lines = [
        f"persistence MSE {first['persistence_mse']:.6g}, last close MSE "
        f"{first['last_close_mse']:.6g}, naive {first['naive_mse']:.6g}, oracle "
        f"{first.get('oracle_mse', float('nan')):.6g} (skill "
        f"{1 - first.get('oracle_mse', float('nan')) / first['naive_mse']:+.3%})",
        f"{'model':<9} {'framework':<12} {'MSE':>10} {'skill':>9} {'achieved':>9} "
        f"{'vs centralised':>15}",
    ]
    for model in MODELS:
        central = runs.get(f"centralised {model}")
        for framework in FRAMEWORKS:
            run = runs.get(f"{framework} {model}")
            if run is None:
                continue
            final = run["final"]
            achieved = final.get("achieved_skill")
            versus = (
                f"{final['mse'] / central['final']['mse'] - 1:+.3%}"
                if central and framework != "centralised"
                else ""
            )
            lines.append(
                f"{model:<9} {framework:<12} {final['mse']:>10.6g} {final['skill']:>+9.3%} "
                f"{'n/a' if achieved is None else format(achieved, '.1%'):>9} {versus:>15}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench_forecast", description=__doc__, allow_abbrev=False
    )
    parser.add_argument("--scale", choices=("small", "paper"), default="small")
    parser.add_argument("--out", type=Path, default=Path("runs/forecast"))
    parser.add_argument("--no-spark", action="store_true", help="leave out the Spark jobs")
    parser.add_argument(
        "--frameworks",
        type=lambda text: tuple(text.split(",")),
        default=FRAMEWORKS,
        help=f"comma-separated subset of {','.join(FRAMEWORKS)} (a long bench measured in parts)",
    )
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--forecast", choices=quantity.QUANTITIES, default=quantity.DEFAULT)
    parser.add_argument(
        "--models",
        type=lambda text: tuple(text.split(",")),
        default=MODELS,
        help=f"comma-separated subset of {','.join(MODELS)}",
    )
    args = parser.parse_args(argv)
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"--models takes {','.join(MODELS)}; unknown: {','.join(sorted(unknown))}")
    unknown = set(args.frameworks) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"--frameworks takes {','.join(FRAMEWORKS)}; unknown: {','.join(unknown)}")
    frameworks = tuple(f for f in args.frameworks if not (args.no_spark and f == "spark"))
    started = time.perf_counter()
    runs = run_all(args.scale, args.out, frameworks, args.master, args.forecast, args.models)
    (args.out / "forecast.json").write_text(json.dumps(runs, indent=1))
    print(f"\nbench-forecast, scale {args.scale} ({SCALES[args.scale].rows:,} rows):")
    print(quantity.label(args.forecast))
    print("\n".join(table(runs) if runs else ["no run finished"]))
    print(f"\n{time.perf_counter() - started:.0f} s in all; results: {args.out / 'forecast.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
