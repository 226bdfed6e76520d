"""Command line: make the synthetic market, or import real exports, as per-province Parquet files.

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from common.data.loaders import Imported, load_joinquant, load_tushare, write_provinces
from common.data.schema import DataError
from common.data.skew import non_iid_split
from common.data.synthetic import DEFAULT_SEED, PAPER_ROWS, province_rows, synthesize_province
from common.members import PAPER
from common.members import load as load_members
from common.provinces import PROVINCES

OUT_ENV = "FEDSTOCK_DATA_DIR"


def _count(text: str) -> int:
    """Row counts as people write them: 2699730, 2,699,730 or 2_699_730."""
    try:
        return int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _seed(text: str) -> int:
    seed = _count(text)
    if seed < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {seed}")
    return seed


def _header() -> None:
    print(f"{'province':<10} {'rows':>10} {'stocks':>7}  file", flush=True)


def _line(province: str, frame: pd.DataFrame, path: Path) -> None:
    stocks = frame["code"].nunique()
    print(f"{province:<10} {len(frame):>10,} {stocks:>7,}  {path}", flush=True)


def _footer(rows: int, started: float) -> None:
    print(f"{'total':<10} {rows:>10,} {'':>7}  in {time.perf_counter() - started:.1f} s")


def _synth(args: argparse.Namespace) -> None:
    """One member at a time, so memory stays at one member's rows and progress shows."""
    started = time.perf_counter()
    try:
        members = load_members(args.members)
        provinces = [members.check(p) for p in args.province or members.names]
    except ValueError as error:  # MembersError among them
        raise DataError(str(error)) from None
    if args.split == "non-iid" and members != PAPER:
        raise DataError("--split non-iid deals the paper's nine provinces only: drop --members")
    province_rows(args.rows, members)  # a bad --rows fails before any file is written
    # The non-IID split deals the whole market's stocks out at once.
    skewed = non_iid_split(args.rows, args.seed) if args.split == "non-iid" else {}
    _header()
    rows = 0
    for province in provinces:
        frame = skewed.get(province)
        if frame is None:
            frame = synthesize_province(province, args.rows, args.seed, members)
        path = write_provinces({province: frame}, args.out, members)[province]
        _line(province, frame, path)
        rows += len(frame)
    _footer(rows, started)


def _write_import(imported: Imported, out: str, started: float) -> None:
    paths = write_provinces(imported.frames, out)
    _header()
    for province, frame in imported.frames.items():
        _line(province, frame, paths[province])
    _footer(sum(len(frame) for frame in imported.frames.values()), started)
    absent = [p for p in PROVINCES if p not in imported.frames]
    if absent:
        print(f"no rows for {', '.join(absent)}: no file written for them (older files stay)")
    for line in imported.skipped_summary():
        print(line)


def _import_tushare(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    _write_import(load_tushare(args.daily, args.basic), args.out, started)


def _import_joinquant(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    _write_import(load_joinquant(args.prices, args.provinces), args.out, started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m common.data",
        description="Write raw daily bars as one Parquet file per province "
        "(DIR/<province>.parquet), the files every fedstock client reads.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    out_default = os.environ.get(OUT_ENV)

    def add_out(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--out",
            metavar="DIR",
            default=out_default,
            required=out_default is None,
            help=f"directory for the <province>.parquet files, created if needed "
            f"(default: ${OUT_ENV}{f', now {out_default}' if out_default else ''})",
        )

    synth = commands.add_parser(
        "synth",
        allow_abbrev=False,
        help="generate the deterministic synthetic A-share market",
        description="Generate the deterministic synthetic A-share market: same rows and seed, "
        "same bytes. Each province can be made on its own and matches the full run.",
    )
    synth.add_argument(
        "--rows",
        type=_count,
        default=PAPER_ROWS,
        help=f"total rows over all the members, split by fixed unequal shares "
        f"(default: {PAPER_ROWS:,}, the paper's data set)",
    )
    synth.add_argument(
        "--seed",
        type=_seed,
        default=DEFAULT_SEED,
        help=f"non-negative random seed; the clients' embedded default is the same market "
        f"(default: {DEFAULT_SEED})",
    )
    synth.add_argument(
        "--province",
        action="append",
        metavar="PROVINCE",
        help=f"write only this member (repeatable; one of the members, by default "
        f"{', '.join(PROVINCES)}; default: all of them)",
    )
    synth.add_argument(
        "--members",
        type=Path,
        metavar="FILE",
        help="deal the market's rows to these members, as the clients' --members FILE does "
        "(docs/members.md), one file each; default: the paper's nine provinces",
    )
    synth.add_argument(
        "--split",
        choices=("provinces", "non-iid"),
        default="provinces",
        help="provinces: each province's own stocks (mildly non-IID); non-iid: the same stocks "
        "dealt out by median close, one price band per province, cheapest to hubei, dearest to "
        "beijing, with the same unequal row shares (default: provinces)",
    )
    add_out(synth)
    synth.set_defaults(run=_synth)

    tushare = commands.add_parser(
        "import-tushare",
        allow_abbrev=False,
        help="import Tushare daily CSVs",
        description="Import Tushare `daily` CSV exports (vol in lots of 100 shares and amount "
        "in thousands of yuan are converted to shares and yuan; limit prices are derived from "
        "pre_close). Stocks whose area is outside the nine provinces are skipped and listed.",
    )
    tushare.add_argument(
        "--daily", nargs="+", required=True, metavar="FILE", help="Tushare daily CSV file(s)"
    )
    tushare.add_argument(
        "--basic",
        required=True,
        metavar="FILE",
        help="Tushare stock_basic CSV (ts_code,name,area,...): gives each stock's province "
        "and ST status",
    )
    add_out(tushare)
    tushare.set_defaults(run=_import_tushare)

    joinquant = commands.add_parser(
        "import-joinquant",
        allow_abbrev=False,
        help="import JoinQuant get_price CSVs",
        description="Import JoinQuant get_price(..., frequency='daily') CSV exports. Without a "
        "code column the stock code is the file name, e.g. 600000.XSHG.csv.",
    )
    joinquant.add_argument(
        "--prices", nargs="+", required=True, metavar="FILE", help="JoinQuant price CSV file(s)"
    )
    joinquant.add_argument(
        "--provinces",
        required=True,
        metavar="FILE",
        help="stock → province CSV: code,province (English name or Tushare area such as 广东) "
        "or a Tushare stock_basic CSV",
    )
    add_out(joinquant)
    joinquant.set_defaults(run=_import_joinquant)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except DataError as error:  # bad input; anything else is a bug and keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
