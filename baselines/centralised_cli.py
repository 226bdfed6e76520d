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
    cli.add_cv_args(parser)
    args = parser.parse_args(argv)
    cli.check(parser, args)
    cli.check_cv(parser, args)
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
