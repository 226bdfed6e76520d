"""The command line of `python -m common.models.ahead`: where the built module goes."""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

from common.models.ahead import DECLARED, build


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.models.ahead",
        description="Build the trees' compiled kernels into one extension module.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path(sysconfig.get_paths()["platlib"]),
        help="where the module goes (default: this environment's site-packages)",
    )
    path = build(parser.parse_args(argv).output_dir)
    print(f"{len(DECLARED)} kernels built into {path}", file=sys.stderr)
