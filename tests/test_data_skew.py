"""The strongly non-IID split: deterministic, every row once, one disjoint price band each."""

from __future__ import annotations

from itertools import pairwise

import pandas as pd
import pytest

from common.data import __main__ as cli
from common.data import load_province
from common.data.schema import ORACLE, RAW_COLUMNS
from common.data.skew import BAND_ORDER, non_iid_split
from common.data.synthetic import province_rows, synthesize
from common.provinces import PROVINCES

ROWS, SEED = 20_000, 3


@pytest.fixture(scope="module")
def split() -> dict[str, pd.DataFrame]:
    return non_iid_split(ROWS, SEED)


def test_deterministic(split):
    again = non_iid_split(ROWS, SEED)
    for province in PROVINCES:
        pd.testing.assert_frame_equal(split[province], again[province])


def test_every_row_exactly_once_in_the_same_schema(split):
    market = pd.concat(synthesize(ROWS, SEED).values(), ignore_index=True)
    pooled = pd.concat(split.values(), ignore_index=True)
    assert all(list(frame.columns) == [*RAW_COLUMNS, ORACLE] for frame in split.values())
    key = ["code", "date"]
    pd.testing.assert_frame_equal(
        pooled.sort_values(key, ignore_index=True), market.sort_values(key, ignore_index=True)
    )
    codes = [set(frame["code"]) for frame in split.values()]
    assert sum(map(len, codes)) == len(set().union(*codes))  # a stock stays whole


def test_provinces_hold_disjoint_price_bands_of_unequal_size(split):
    medians = [split[p].groupby("code")["close"].median() for p in BAND_ORDER]
    for cheaper, dearer in pairwise(medians):
        assert cheaper.max() < dearer.min()
    # Targets differ strongly: the dearest band's typical price is many times the cheapest's.
    typical = [split[p]["close"].median() for p in BAND_ORDER]
    assert typical[-1] > 5 * typical[0]
    sizes = [len(split[p]) for p in PROVINCES]
    assert max(sizes) > 2 * min(sizes)
    assert sum(sizes) == sum(province_rows(ROWS).values())


def test_cli_writes_loadable_files(tmp_path, split):
    argv = ["synth", "--rows", str(ROWS), "--seed", str(SEED), "--split", "non-iid"]
    assert cli.main([*argv, "--out", str(tmp_path), "--province", "beijing"]) == 0
    loaded = load_province(tmp_path, "beijing")
    assert len(loaded) == len(split["beijing"])
    assert loaded["close"].median() == pytest.approx(split["beijing"]["close"].median())
