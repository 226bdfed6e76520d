"""The command line of `python -m baselines.spark`: flags onto `spark.run` in its own session."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from baselines import cli, results
from baselines.models import ALL_MODELS
from baselines.spark import ENGINES, MLLIB_MODELS, SCALINGS, run, start_session
from common.models.histgrow import TREE_MODELS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m baselines.spark",
        description="Train one model on Apache Spark as the seed paper's decentralised "
        "framework: nine RDD partitions (one per province), a scikit-learn model per partition, "
        "merged by a reduce; or Spark MLlib's own estimator (--engine mllib). Same "
        "preprocessing, split and scaling as the federation. Prints MSE per province and "
        "overall, the times with and without session start-up, and writes a results file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cli.add_model_args(parser, ALL_MODELS)
    cli.add_tree_args(parser)
    cli.add_data_args(parser)
    add = parser.add_argument
    add("--engine", choices=ENGINES, default="sklearn", help="per-partition sklearn, or MLlib")
    add(
        "--scaling",
        choices=SCALINGS,
        default="global",
        help="global: features scaled by all provinces' training rows (the federation's); "
        "province: each province by its own, as clients that each fit a scaler (sklearn engine)",
    )
    add("--master", default="local[*]", help="Spark master URL, e.g. spark://host:7077")
    add("--driver-memory", default="4g", help="driver JVM memory (4–6g for 2.7M rows)")
    add("--results", type=Path, help="results JSON (default: runs/spark-MODEL.json)")
    cli.add_cv_args(parser)
    args = parser.parse_args(argv)
    cli.check(parser, args)
    cli.check_cv(parser, args)
    if args.cv_folds and args.engine != "sklearn":
        parser.error("--cv-folds cross-validates on the sklearn engine, as the federation does")
    if args.engine == "mllib" and args.model not in MLLIB_MODELS:
        parser.error(f"--engine mllib runs --model {', '.join(MLLIB_MODELS)}")
    if args.engine == "sklearn" and args.model in TREE_MODELS:
        parser.error(f"--model {args.model} runs on Spark as MLlib's: add --engine mllib")
    path = args.results or Path(
        f"runs/spark-{'' if args.engine == 'sklearn' else 'mllib-'}{args.model}.json"
    )
    print(f"starting Spark ({args.master})…", flush=True)
    started = time.perf_counter()
    spark = start_session(args.master, args.driver_memory)
    session_seconds = time.perf_counter() - started
    try:
        outcome = run(
            spark,
            args.model,
            cli.data_options(args),
            replace(cli.model_options(args), tree_settings=cli.tree_settings(parser, args)),
            args.engine,
            session_seconds,
            scaling=args.scaling,
            cv_folds=args.cv_folds,
            cv_embargo=args.cv_embargo,
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    results.write(path, outcome)
    print(results.summary(outcome))
    print(
        "training seconds are fit_seconds: the model fitted and merged on rows already read, "
        "split and cached; job_seconds adds reading, splitting and scoring; total_seconds adds "
        "the session start-up"
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
