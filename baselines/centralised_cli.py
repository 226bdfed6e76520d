"""The command line of `python -m baselines.centralised`: flags onto `centralised.run`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from baselines import cli, results
from baselines.centralised import run
from baselines.models import ALL_MODELS


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
    args = parser.parse_args(argv)
    cli.check(parser, args)
    if args.cv_folds < 0 or args.cv_folds == 1:
        parser.error("--cv-folds must be 0 (no cross-validation) or at least 2")
    if args.cv_embargo < 0:
        parser.error("--cv-embargo cannot be negative")
    path = args.results or Path(f"runs/centralised-{args.model}.json")
    try:
        options = replace(cli.model_options(args), tree_settings=cli.tree_settings(parser, args))
        outcome = run(args.model, cli.data_options(args), options, args.cv_folds, args.cv_embargo)
    except (ValueError, OSError) as error:  # DataError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    results.write(path, outcome)
    print(results.summary(outcome))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
