"""Loaders for real exports, the Parquet files, and the CLI: right units, clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data import (
    DataError,
    load_joinquant,
    load_province,
    load_tushare,
    synthesize,
    write_provinces,
)
from common.data.ashare import joinquant_code, round_price
from common.data.synthetic import synthesize_province
from common.members import Members

ROOT = Path(__file__).resolve().parents[1]

STOCK_BASIC = """\
ts_code,symbol,name,area,industry,list_date
600000.SH,600000,浦发银行,上海,银行,19991110
000001.SZ,000001,平安银行,深圳,银行,19910403
600001.SH,600001,ST邯钢,湖北,普钢,19980122
300001.SZ,300001,特锐德,山东,电气设备,20091030
688001.SH,688001,华兴源创,江苏,专用机械,20190722
000004.SZ,000004,国华网安,河南,软件服务,19910114
"""

TUSHARE_DAILY = """\
ts_code,trade_date,open,high,low,close,pre_close,change,pct_chg,vol,amount
600000.SH,20180709,9.27,9.53,9.27,9.50,10.05,-0.55,-5.47,224075.27,212109.327
600000.SH,20180706,10.00,10.10,9.95,10.05,10.00,0.05,0.5,1000,1005.5
000001.SZ,20180709,9.00,9.10,8.90,9.00,9.00,0,0,100,90
600001.SH,20180709,9.00,9.10,8.90,9.00,10.00,-1,-10,100,90
300001.SZ,20200821,20.00,20.50,19.80,20.10,20.00,0.1,0.5,100,200
300001.SZ,20200824,20.00,24.00,19.80,24.00,20.10,3.9,19.4,100,220
688001.SH,20200824,50.00,51.00,49.00,50.00,50.00,0,0,100,500
000004.SZ,20180709,9.00,9.10,8.90,9.00,9.00,0,0,100,90
830799.BJ,20220104,9.00,9.10,8.90,9.00,9.00,0,0,100,90
"""

JOINQUANT_PRICES = """\
date,open,close,high,low,volume,money,paused,high_limit,low_limit,avg,pre_close
2018-07-06,9.20,9.27,9.30,9.10,1000000,9250000.00,0,10.12,8.28,9.25,9.20
2018-07-09,9.27,9.50,9.53,9.27,22407527,212109327.00,0,10.20,8.34,9.47,9.27
"""


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


@pytest.fixture
def basic(tmp_path: Path) -> Path:
    return write(tmp_path / "stock_basic.csv", STOCK_BASIC)


@pytest.fixture
def daily(tmp_path: Path) -> Path:
    return write(tmp_path / "daily.csv", TUSHARE_DAILY)


def row(frame: pd.DataFrame, code: str, date: str) -> pd.Series:
    found = frame[(frame["code"] == code) & (frame["date"] == pd.Timestamp(date))]
    assert len(found) == 1
    return found.iloc[0]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("600000.SH", "600000.XSHG"),
        ("000001.SZ", "000001.XSHE"),
        ("600000.XSHG", "600000.XSHG"),
        (" 000001.xshe ", "000001.XSHE"),
        ("830799.BJ", None),
        ("600000", None),
        ("garbage", None),
    ],
)
def test_code_mapping(given: str, expected: str | None) -> None:
    assert joinquant_code(given) == expected


def test_round_price_is_half_up() -> None:
    rounded = round_price(np.array([11.055, 9.045, 10.197, 0.005]))
    assert rounded.tolist() == [11.06, 9.05, 10.2, 0.01]  # np.round gives 9.04


def test_tushare_units_limits_and_provinces(daily: Path, basic: Path) -> None:
    imported = load_tushare([daily], basic)
    assert list(imported.frames) == ["hubei", "shandong", "jiangsu", "guangdong", "shanghai"]
    shanghai = imported.frames["shanghai"]
    assert shanghai["date"].is_monotonic_increasing  # sorted by code, then date
    bar = row(shanghai, "600000.XSHG", "2018-07-09")
    assert bar["volume"] == 22_407_527  # 224,075.27 lots of 100 shares
    assert bar["money"] == pytest.approx(212_109_327)  # 212,109.327 thousand yuan
    assert (bar["high_limit"], bar["low_limit"]) == (11.06, 9.05)  # 10.05 ± 10 %, half up
    assert (bar["open"], bar["close"], bar["paused"]) == (9.27, 9.50, 0)

    st = row(imported.frames["hubei"], "600001.XSHG", "2018-07-09")
    assert (st["high_limit"], st["low_limit"]) == (10.50, 9.50)
    chinext = imported.frames["shandong"]
    before = row(chinext, "300001.XSHE", "2020-08-21")
    after = row(chinext, "300001.XSHE", "2020-08-24")
    assert (before["high_limit"], before["low_limit"]) == (22.00, 18.00)
    assert (after["high_limit"], after["low_limit"]) == (24.12, 16.08)
    star = row(imported.frames["jiangsu"], "688001.XSHG", "2020-08-24")
    assert (star["high_limit"], star["low_limit"]) == (60.00, 40.00)

    assert imported.frames["guangdong"]["code"].tolist() == ["000001.XSHE"]  # 深圳
    assert imported.skipped == {
        "000004.XSHE": "area 河南 is outside the nine provinces",
        "830799.BJ": "not a Shanghai or Shenzhen stock code",
    }
    assert any("河南" in line for line in imported.skipped_summary())


def test_tushare_files_in_gbk_and_several_files(tmp_path: Path, basic: Path) -> None:
    lines = TUSHARE_DAILY.splitlines()
    first = write(tmp_path / "a.csv", "\n".join(lines[:3]) + "\n")
    second = write(tmp_path / "b.csv", "\n".join([lines[0], *lines[3:]]) + "\n")
    gbk_basic = write(tmp_path / "basic_gbk.csv", STOCK_BASIC, encoding="gbk")
    imported = load_tushare([first, second], gbk_basic)
    assert sum(map(len, imported.frames.values())) == 7


def test_joinquant_file_per_stock_with_a_province_table(tmp_path: Path) -> None:
    prices = write(tmp_path / "600000.XSHG.csv", JOINQUANT_PRICES)
    unnamed = JOINQUANT_PRICES.replace("date,", ",", 1)  # df.to_csv() of the date index
    second = write(tmp_path / "000001.XSHE.csv", unnamed)
    table = write(
        tmp_path / "provinces.csv", "code,province\n600000.XSHG,Shanghai\n000001.SZ,广东\n"
    )
    imported = load_joinquant([prices, second], table)
    assert list(imported.frames) == ["guangdong", "shanghai"]
    bar = row(imported.frames["shanghai"], "600000.XSHG", "2018-07-09")
    assert (bar["volume"], bar["money"]) == (22_407_527, 212_109_327)
    assert (bar["high_limit"], bar["low_limit"], bar["paused"]) == (10.20, 8.34, 0)
    assert len(imported.frames["guangdong"]) == 2


def test_joinquant_panel_export_with_stock_basic(tmp_path: Path, basic: Path) -> None:
    text = (
        "time,code,close,high,low,volume,money,high_limit,low_limit\n"
        "2018-07-09,600000.XSHG,9.50,9.53,9.27,22407527,212109327,10.20,8.34\n"
        "2018-07-10,600000.XSHG,9.50,9.50,9.50,0,0,10.45,8.55\n"
        "2018-07-09,000004.XSHE,9.00,9.10,8.90,100,900,9.90,8.10\n"
    )
    imported = load_joinquant([write(tmp_path / "panel.csv", text)], basic)
    shanghai = imported.frames["shanghai"]
    assert shanghai["open"].isna().all()  # the paper's fields have no open
    assert shanghai["paused"].tolist() == [0, 1]  # no paused column: zero volume means paused
    assert imported.skipped == {"000004.XSHE": "area 河南 is outside the nine provinces"}


def test_parquet_round_trip(tmp_path: Path) -> None:
    frames = synthesize(5_000, seed=4)
    paths = write_provinces(frames, tmp_path / "data")
    assert sorted(path.name for path in paths.values()) == sorted(f"{p}.parquet" for p in frames)
    for province, frame in frames.items():
        loaded = load_province(tmp_path / "data", province)
        pd.testing.assert_frame_equal(loaded, frame)
        assert str(loaded["code"].dtype) == "str"
    assert not list((tmp_path / "data").glob(".*partial"))


# Bad input: every path ends in a DataError that names the file and what to fix.


def test_missing_files(tmp_path: Path, daily: Path, basic: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_tushare([tmp_path / "nope.csv"], basic)
    with pytest.raises(DataError, match=r"nobasic\.csv: file not found"):
        load_tushare([daily], tmp_path / "nobasic.csv")
    with pytest.raises(DataError, match=r"600000\.XSHG\.csv: file not found"):
        load_joinquant([tmp_path / "600000.XSHG.csv"], basic)
    with pytest.raises(DataError, match=r"hubei\.parquet: no data for hubei; create it with"):
        load_province(tmp_path, "hubei")
    with pytest.raises(DataError, match="no Tushare daily files"):
        load_tushare([], basic)


def test_garbage_files(tmp_path: Path, basic: Path) -> None:
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match=r"binary\.csv: "):
        load_tushare([binary], basic)
    prose = write(tmp_path / "prose.csv", "Dear user,\nthis is not a price file.\n")
    with pytest.raises(DataError, match=r"prose\.csv: missing column\(s\) ts_code"):
        load_tushare([prose], basic)
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        load_tushare([write(tmp_path / "empty.csv", "")], basic)
    corrupt = tmp_path / "hubei.parquet"
    corrupt.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(DataError, match=r"hubei\.parquet: not a readable Parquet file"):
        load_province(tmp_path, "hubei")


def test_non_numeric_value_is_quoted_with_its_row(tmp_path: Path, basic: Path) -> None:
    bad = TUSHARE_DAILY.replace("9.27,9.53,9.27,9.50,10.05", "9.27,9.53,9.27,abc,10.05")
    path = write(tmp_path / "daily.csv", bad)
    with pytest.raises(DataError, match=r"daily\.csv: column 'close' needs numbers, found 'abc' "):
        load_tushare([path], basic)
    with pytest.raises(DataError, match="in data row 1 "):
        load_tushare([path], basic)
    bad_date = write(tmp_path / "d2.csv", TUSHARE_DAILY.replace("20180706", "2018-07-06"))
    with pytest.raises(DataError, match="column 'trade_date' needs dates, found '2018-07-06'"):
        load_tushare([bad_date], basic)


def test_missing_columns(tmp_path: Path, daily: Path, basic: Path) -> None:
    no_vol = pd.read_csv(daily, dtype=str).drop(columns="vol")
    no_vol.to_csv(tmp_path / "novol.csv", index=False)
    with pytest.raises(DataError, match=r"novol\.csv: missing column\(s\) vol; found ts_code"):
        load_tushare([tmp_path / "novol.csv"], basic)
    no_close = write(tmp_path / "600000.XSHG.csv", JOINQUANT_PRICES.replace("close,", "shut,", 1))
    with pytest.raises(DataError, match=r"missing column\(s\) close"):
        load_joinquant([no_close], basic)
    table = write(tmp_path / "table.csv", "stock,where\n600000.XSHG,shanghai\n")
    with pytest.raises(DataError, match="needs columns code,province"):
        load_joinquant([daily], table)
    written = synthesize(5_000, seed=0)["hubei"].drop(columns="money")
    written.to_parquet(tmp_path / "hubei.parquet", index=False)
    with pytest.raises(DataError, match=r"hubei\.parquet: missing column\(s\) money"):
        load_province(tmp_path, "hubei")


def test_empty_inputs(tmp_path: Path, basic: Path) -> None:
    header_only = write(tmp_path / "daily.csv", TUSHARE_DAILY.splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"daily\.csv: no rows"):
        load_tushare([header_only], basic)
    empty = synthesize(5_000, seed=0)["hubei"].iloc[:0]
    empty.to_parquet(tmp_path / "hubei.parquet", index=False)
    with pytest.raises(DataError, match=r"hubei\.parquet: no rows"):
        load_province(tmp_path, "hubei")
    with pytest.raises(DataError, match="hubei rows: no rows"):
        write_provinces({"hubei": empty}, tmp_path / "out")
    outside = "\n".join(line for line in TUSHARE_DAILY.splitlines() if "000004" in line)
    only_henan = write(tmp_path / "henan.csv", TUSHARE_DAILY.splitlines()[0] + "\n" + outside)
    with pytest.raises(DataError, match=r"no rows belong to the nine provinces.*河南"):
        load_tushare([only_henan], basic)


def test_unknown_provinces(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="unknown member 'tibet'; expected one of the 9 members: hubei"
    ):
        load_province(tmp_path, "tibet")
    with pytest.raises(DataError, match="unknown member 'mars'"):
        write_provinces({"mars": synthesize(5_000, seed=0)["hubei"]}, tmp_path)
    prices = write(tmp_path / "600000.XSHG.csv", JOINQUANT_PRICES)
    table = write(tmp_path / "table.csv", "code,province\n600000.XSHG,guangzhou\n")
    with pytest.raises(DataError, match=r"table\.csv: unknown province 'guangzhou' in data row 1"):
        load_joinquant([prices], table)


def test_joinquant_code_must_be_known(tmp_path: Path, basic: Path) -> None:
    prices = write(tmp_path / "prices.csv", JOINQUANT_PRICES)
    with pytest.raises(DataError, match=r"'prices' as the file name is not a .* stock code"):
        load_joinquant([prices], basic)


def test_duplicate_days_across_files(tmp_path: Path, basic: Path) -> None:
    (tmp_path / "again").mkdir()
    first = write(tmp_path / "600000.XSHG.csv", JOINQUANT_PRICES)
    again = write(tmp_path / "again" / "600000.XSHG.csv", JOINQUANT_PRICES)
    with pytest.raises(DataError, match=r"600000\.XSHG appears twice on 2018-07-06"):
        load_joinquant([first, again], basic)


# The command line: exit status 2 and one line on stderr for bad input.


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.data", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "FEDSTOCK_DATA_DIR"},
        timeout=120,
    )


def test_cli_synth_writes_provinces(tmp_path: Path) -> None:
    done = cli("synth", "--rows", "5,000", "--seed", "2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout and "5,000" in done.stdout
    assert len(list(tmp_path.glob("*.parquet"))) == 9
    pd.testing.assert_frame_equal(
        load_province(tmp_path, "fujian"), synthesize(5_000, seed=2)["fujian"]
    )


def test_cli_synth_deals_the_rows_a_members_files_clients_would_make(tmp_path: Path) -> None:
    """The files the data override mounts hold what each member's client would synthesize."""
    members_file = tmp_path / "members.csv"
    members_file.write_text("name\nhubei\nchongqing\ntibet\n")
    out = tmp_path / "out"
    done = cli("synth", "--rows", "6000", "--members", str(members_file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(path.stem for path in out.glob("*.parquet")) == ["chongqing", "hubei", "tibet"]
    members = Members.of(["hubei", "chongqing", "tibet"])
    for name in members.names:
        pd.testing.assert_frame_equal(
            load_province(out, name, members), synthesize_province(name, 6000, 7, members)
        )
    refused = cli("synth", "--members", str(members_file), "--split", "non-iid", "--out", str(out))
    assert refused.returncode == 2
    assert "nine provinces only" in refused.stderr


def test_cli_imports_tushare(tmp_path: Path, daily: Path, basic: Path) -> None:
    done = cli(
        "import-tushare", "--daily", str(daily), "--basic", str(basic), "--out", str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert "area 河南 is outside the nine provinces: 000004.XSHE" in done.stdout
    assert len(load_province(tmp_path, "shanghai")) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["synth", "--rows", "10", "--out", "OUT"], "total rows must be between"),
        (["synth", "--rows", "many", "--out", "OUT"], "not a whole number"),
        (["synth", "--seed", "-1", "--out", "OUT"], "non-negative"),
        (["synth", "--province", "tibet", "--out", "OUT"], "unknown member 'tibet'"),
        (["synth", "--members", "OUT", "--out", "OUT"], "cannot read the members file"),
        (["synth", "--rows", "5000"], "--out"),
        (
            ["import-tushare", "--daily", "missing.csv", "--basic", "BASIC", "--out", "OUT"],
            "missing.csv: file not found",
        ),
        (
            ["import-joinquant", "--prices", "GARBAGE", "--provinces", "BASIC", "--out", "OUT"],
            "missing column(s)",
        ),
    ],
)
def test_cli_bad_input(tmp_path: Path, basic: Path, args: list[str], message: str) -> None:
    garbage = write(tmp_path / "600000.XSHG.csv", "nothing,useful\n1,2\n")
    replace = {"OUT": str(tmp_path / "out"), "GARBAGE": str(garbage), "BASIC": str(basic)}
    done = cli(*(replace.get(arg, arg) for arg in args))
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
