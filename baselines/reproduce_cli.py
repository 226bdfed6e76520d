"""The command line of `python -m baselines.reproduce`: flags onto a `Plan`, executed."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from baselines import agreement, paper, report
from baselines.data import DataOptions, write_synthetic
from baselines.reproduce import SCALES, Plan, execute, for_setting
from common import quantity

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def main(argv: list[str] | None = None, session: SparkSession | None = None) -> int:
    """The command; `session` lets a caller that already runs Spark (the tests) lend it."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m baselines.reproduce",
        description="Run federated, centralised and Spark learning for LR, RF and SVM on the "
        "same data and split, and write the seed paper's Tables 2 and 3 beside ours (CSV and "
        "Markdown), bar charts, the federation's convergence plot and report.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--scale", choices=sorted(SCALES), default="small", help="rows and model sizes")
    add("--out", type=Path, default=Path("runs/reproduce"), help="folder for everything written")
    add("--data", help="folder of <province>.parquet; default: the synthetic market, written once")
    add("--rows", type=int, help="rows of the synthetic market (default: the scale's)")
    add("--seed", type=int, default=DataOptions.seed, help="seed of the synthetic market")
    add("--setting", choices=("next-day", "paper"), default="next-day", help="target and split")
    add(
        "--forecast",
        choices=quantity.QUANTITIES,
        default=quantity.DEFAULT,
        help="the quantity forecast and scored in every run, as the server's --forecast "
        "(change and return: next-day only)",
    )
    add(
        "--beside",
        choices=("next-day", "paper"),
        help="also run this setting (without the DP sweep), in OUT/SETTING, and show its "
        "figures beside in the agreement section",
    )
    add("--master", default="local[*]", help="Spark master URL")
    add("--driver-memory", help="Spark driver memory (default: the scale's)")
    add("--no-extras", action="store_true", help="skip the MLlib and exact-SVR comparisons")
    add("--no-privacy", action="store_true", help="skip the DP sweep (the MSE/ε plot)")
    add(
        "--models",
        type=lambda text: tuple(text.split(",")),
        default=paper.MODELS,
        help="comma-separated subset of lr,rf,svm (the tables show n/a for the others)",
    )
    args = parser.parse_args(argv)
    # A plain `kill` ends the run through its finally blocks: no federation process left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    unknown = set(args.models) - set(paper.MODELS)
    if unknown:
        parser.error(f"--models takes {','.join(paper.MODELS)}; unknown: {','.join(unknown)}")
    try:
        quantity.check(args.forecast, args.setting)
    except ValueError as error:
        parser.error(f"--forecast {args.forecast}: {error}")
    scale = SCALES[args.scale]
    rows = args.rows or scale.rows
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.data
    if folder is None:
        folder = str(args.out / "data")
        print(f"writing the synthetic market ({rows:,} rows) to {folder}/ …", flush=True)
        write_synthetic(Path(folder), rows, args.seed)
    plan = Plan(
        DataOptions(
            data=folder, rows=rows, seed=args.seed, setting=args.setting, forecast=args.forecast
        ),
        for_setting(scale, args.setting),
        args.out,
        args.master,
        args.driver_memory or scale.driver_memory,
        extras=not args.no_extras,
        synthetic=args.data is None,
        scale_name=args.scale,
        models=args.models,
        privacy=not args.no_privacy,
    )
    comparison = execute(plan, session)
    beside, beside_name = None, ""
    if args.beside and args.beside != args.setting:
        beside_name = args.beside
        print(f"\nthe {beside_name} setting beside it, in {args.out / beside_name}/ …", flush=True)
        other = replace(
            plan,
            data=replace(plan.data, setting=beside_name),
            scale=for_setting(scale, beside_name),
            out=args.out / beside_name,
            privacy=False,
        )
        beside = execute(other, session)
        report.write_report(beside, other.out, agreement.section(beside))
    path = report.write_report(
        comparison, args.out, agreement.section(comparison, beside, beside_name)
    )
    for metric in report.TABLES:
        print()
        print(report.write_table(comparison, metric, args.out)[1].read_text(), end="")
    print(f"\nreport: {path}")
    return 0 if comparison.runs else 1


if __name__ == "__main__":
    sys.exit(main())
