"""Readers for the daily-bar exports people really have, and the per-province Parquet files.

Every reader ends in `validate_raw`, so whatever the source, the rows come out canonical.
"""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from common.data.ashare import joinquant_code, limit_rate, round_price
from common.data.schema import RAW_COLUMNS, DataError, to_dates, to_float, validate_raw
from common.members import PAPER, Members
from common.provinces import AREA_TO_PROVINCE, PROVINCES

log = logging.getLogger(__name__)

JOINQUANT_NEEDS = ("close", "high", "low", "volume", "money", "high_limit", "low_limit")
TUSHARE_NEEDS = (
    *("ts_code", "trade_date", "pre_close"),
    *("open", "high", "low", "close", "vol", "amount"),
)

# Kept as text: leading zeros in codes, YYYYMMDD dates, names.
TEXT_COLUMNS = (
    *("ts_code", "symbol", "code", "name", "area", "province"),
    *("trade_date", "list_date", "date", "time"),
)


@dataclass(frozen=True)
class Listing:
    """What the stock table says about one stock."""

    province: str | None  # None: its area is not one of the nine provinces
    area: str
    st: bool  # special treatment (name contains ST): ±5 % limits


@dataclass
class Imported:
    """Rows per province, and the stocks left out with the reason, for the person importing."""

    frames: dict[str, pd.DataFrame]
    skipped: dict[str, str] = field(default_factory=dict)  # stock code → reason

    def skipped_summary(self) -> list[str]:
        """One line per reason: how many stocks, with a few examples."""
        by_reason: dict[str, list[str]] = {}
        for code, reason in sorted(self.skipped.items()):
            by_reason.setdefault(reason, []).append(code)
        return [
            f"skipped {len(codes)} stock(s), {reason}: {', '.join(codes[:3])}"
            + (", …" if len(codes) > 3 else "")
            for reason, codes in by_reason.items()
        ]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_csv(path: str | Path, needs: Iterable[str] = ()) -> pd.DataFrame:
    """A CSV with its column names lower-cased and code/date columns kept as text.

    Clean number columns parse fast as floats; a column with a bad cell stays text, so
    `to_float` can quote the bad value back.
    """
    path = Path(path)
    text = dict.fromkeys(TEXT_COLUMNS, str)
    try:
        try:
            frame = pd.read_csv(path, dtype=text, encoding="utf-8-sig")
        except UnicodeDecodeError:  # Chinese Windows exports are often GBK
            frame = pd.read_csv(path, dtype=text, encoding="gb18030")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except ValueError as error:  # parser errors, undecodable bytes
        raise DataError(f"{path}: not a readable CSV file ({_first_line(error)})") from None
    frame.columns = [str(column).strip().lower() for column in frame.columns]
    missing = [column for column in needs if column not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"found {', '.join(frame.columns[:12]) or 'none'}"
        )
    if frame.empty:
        raise DataError(f"{path}: no rows")
    return frame


def _province(value: str, path: Path, row: int) -> str | None:
    """Canonical province for an English name or a Tushare area; None for other areas."""
    text = value.strip()
    if text.lower() in PROVINCES:
        return text.lower()
    if text in AREA_TO_PROVINCE:
        return AREA_TO_PROVINCE[text]
    if text.isascii():  # an English name that is not one of ours is a typo, not another area
        raise DataError(
            f"{path}: unknown province {value!r} in data row {row}; expected one of "
            f"{', '.join(PROVINCES)} or a Tushare area such as 广东"
        )
    return None


def read_stock_table(path: str | Path) -> dict[str, Listing]:
    """Stock → province table: `code,province` CSV or a Tushare `stock_basic` CSV.

    Keys are JoinQuant codes. ST status comes from the current name, which is all that
    `stock_basic` knows: a stock that left ST keeps ±5 % limits here.
    """
    path = Path(path)
    frame = read_csv(path)
    key, area = ("ts_code", "area") if "ts_code" in frame.columns else ("code", "province")
    if key not in frame.columns or area not in frame.columns:
        raise DataError(
            f"{path}: a stock table needs columns code,province or Tushare's "
            f"ts_code,name,area; found {', '.join(frame.columns)}"
        )
    names = frame["name"] if "name" in frame.columns else pd.Series("", index=frame.index)
    table = {}
    for row, (code, value, name) in enumerate(
        zip(frame[key], frame[area], names, strict=True), start=1
    ):
        jq = joinquant_code(str(code)) if pd.notna(code) else None
        if jq is None:
            continue  # other exchanges (e.g. Beijing, .BJ): their prices are skipped too
        value = "" if pd.isna(value) else str(value)
        st = isinstance(name, str) and "ST" in name
        table[jq] = Listing(_province(value, path, row), value.strip(), st)
    if not table:
        raise DataError(f"{path}: no Shanghai or Shenzhen stock codes in column {key!r}")
    return table


def _skip_reason(listing: Listing | None) -> str | None:
    if listing is None:
        return "not in the stock table"
    if listing.province is None:
        return f"area {listing.area or '(empty)'} is outside the nine provinces"
    return None


def _by_province(
    parts: list[pd.DataFrame], table: Mapping[str, Listing], source: str, skipped: dict[str, str]
) -> Imported:
    """Split canonical rows by each stock's province, leaving out stocks we cannot place."""
    rows = pd.concat(parts, ignore_index=True)
    imported = Imported(frames={}, skipped=skipped)
    placed = {}
    for code in rows["code"].unique():
        listing = table.get(code)
        reason = _skip_reason(listing)
        if reason:
            imported.skipped[code] = reason
        else:
            placed[code] = listing.province
    if not placed:
        lines = "; ".join(imported.skipped_summary())
        raise DataError(f"{source}: no rows belong to the nine provinces ({lines})")
    groups = dict(list(rows.groupby(rows["code"].map(placed))))
    for name in (province for province in PROVINCES if province in groups):
        frame = groups[name].sort_values(["code", "date"], kind="stable", ignore_index=True)
        imported.frames[name] = validate_raw(frame, f"{name} rows from {source}")
    for line in imported.skipped_summary():
        log.info(line)
    return imported


def _joinquant_rows(path: Path) -> pd.DataFrame:
    """One get_price export in canonical columns (not yet validated as a whole)."""
    frame = read_csv(path, JOINQUANT_NEEDS)
    date = next((c for c in ("date", "time") if c in frame.columns), None)
    if date is None and frame.columns[0].startswith("unnamed"):
        date = frame.columns[0]  # df.to_csv() wrote the date index without a name
    if date is None:
        raise DataError(f"{path}: missing the date column (date or time)")
    if "code" in frame.columns:
        raw_codes = frame["code"].fillna("")
    else:
        raw_codes = pd.Series(path.stem, index=frame.index)
    known = {code: joinquant_code(code) for code in raw_codes.unique()}
    if None in known.values():
        bad = next(code for code, jq in known.items() if jq is None)
        where = "in column code" if "code" in frame.columns else "as the file name"
        raise DataError(
            f"{path}: {bad!r} {where} is not a Shanghai/Shenzhen stock code like 600000.XSHG"
        )
    numbers = {c: to_float(frame[c], c, str(path)) for c in JOINQUANT_NEEDS}
    opened = to_float(frame["open"], "open", str(path)) if "open" in frame.columns else np.nan
    if "paused" in frame.columns:
        paused = to_float(frame["paused"], "paused", str(path))
    else:  # exports without the field still mark suspended days by zero volume
        paused = (numbers["volume"] == 0).astype(np.int8)
    return pd.DataFrame(
        {
            "date": to_dates(frame[date], date, str(path)),
            "code": raw_codes.map(known),
            "open": opened,
            **numbers,
            "paused": paused,
        }
    )[list(RAW_COLUMNS)]


def load_joinquant(price_files: Iterable[str | Path], stock_table: str | Path) -> Imported:
    """JoinQuant get_price daily CSVs (one stock per file, or with a code column) by province."""
    files = [Path(path) for path in price_files]
    if not files:
        raise DataError("no JoinQuant price files given")
    table = read_stock_table(stock_table)
    parts = [_joinquant_rows(path) for path in files]
    return _by_province(parts, table, f"{len(files)} JoinQuant file(s)", skipped={})


def _tushare_rows(
    path: Path, table: Mapping[str, Listing], skipped: dict[str, str]
) -> pd.DataFrame:
    """One Tushare daily export in canonical columns: lots → shares, thousands → yuan."""
    frame = read_csv(path, TUSHARE_NEEDS)
    source = str(path)
    ts_codes = frame["ts_code"].fillna("")
    known = {code: joinquant_code(code) for code in ts_codes.unique()}
    for code, jq in known.items():
        if jq is None:
            skipped[code or "(empty)"] = "not a Shanghai or Shenzhen stock code"
    codes = ts_codes.map(known)
    frame = frame[codes.notna()].reset_index(drop=True)
    codes = codes.dropna().reset_index(drop=True).astype("str")
    dates = to_dates(frame["trade_date"], "trade_date", source, format="%Y%m%d")
    pre_close = to_float(frame["pre_close"], "pre_close", source)
    st = {code: code in table and table[code].st for code in codes.unique()}
    rate = limit_rate(codes, dates, codes.map(st).astype(bool))
    return pd.DataFrame(
        {
            "date": dates,
            "code": codes,
            **{c: to_float(frame[c], c, source) for c in ("open", "close", "high", "low")},
            "volume": to_float(frame["vol"], "vol", source) * 100,
            "money": to_float(frame["amount"], "amount", source) * 1000,
            "high_limit": round_price(pre_close * (1 + rate)),
            "low_limit": round_price(pre_close * (1 - rate)),
            "paused": np.int8(0),  # Tushare daily leaves suspended days out
        }
    )[list(RAW_COLUMNS)]


def load_tushare(daily_files: Iterable[str | Path], stock_basic: str | Path) -> Imported:
    """Tushare `daily` CSVs by province, placed and ST-flagged by a `stock_basic` CSV."""
    files = [Path(path) for path in daily_files]
    if not files:
        raise DataError("no Tushare daily files given")
    table = read_stock_table(stock_basic)
    skipped: dict[str, str] = {}
    parts = [_tushare_rows(path, table, skipped) for path in files]
    return _by_province(parts, table, f"{len(files)} Tushare daily file(s)", skipped)


def province_path(data_dir: str | Path, province: str) -> Path:
    """Where a province's raw rows live: DATA_DIR/<province>.parquet."""
    return Path(data_dir) / f"{province}.parquet"


def load_province(data_dir: str | Path, province: str, members: Members = PAPER) -> pd.DataFrame:
    """A member's canonical raw frame from DATA_DIR/<province>.parquet."""
    try:
        province = members.check(province)
    except ValueError as error:
        raise DataError(str(error)) from None
    path = province_path(data_dir, province)
    if not path.is_file():
        raise DataError(
            f"{path}: no data for {province}; create it with "
            f"`python -m common.data synth --out {data_dir}` or an import-* command"
        )
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(error)})") from None
    return validate_raw(frame, str(path))


def write_provinces(
    frames: Mapping[str, pd.DataFrame], out_dir: str | Path, members: Members = PAPER
) -> dict[str, Path]:
    """Write each of `members`' frames to OUT_DIR/<member>.parquet, checked and byte-for-byte
    reproducible.

    Each file is written beside its target and renamed, so a reader never sees half a file.
    """
    written = {}
    for name, frame in frames.items():
        try:
            province = members.check(name)
        except ValueError as error:
            raise DataError(str(error)) from None
        path = province_path(out_dir, province)
        frame = validate_raw(frame, f"{province} rows")
        partial = path.with_name(f".{path.name}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(partial, index=False)
            partial.replace(path)
        except OSError as error:
            raise DataError(f"{path}: cannot write ({error.strerror or error})") from None
        written[province] = path
    return written
