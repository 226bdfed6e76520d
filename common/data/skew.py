"""A strongly non-IID split of the synthetic market: each province holds one band of price levels.

The default market differs between provinces only mildly (their price levels and volatilities
overlap), so every province's local optimum lies near the federation's. Here the same stocks,
whole and unchanged, are pooled and dealt out by their median close: the cheapest stocks to one
province, the next band to the next, with the default market's unequal shares of rows (5–20 %).
Features and targets then differ by province (label and feature skew), which is what the
strategies that correct client drift are for. Same rows and seed, same split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from common.data.schema import DataError
from common.data.synthetic import PROFILES, province_rows, synthesize
from common.provinces import PROVINCES

# Cheapest band first: each province keeps its place in the default market's price order.
BAND_ORDER: tuple[str, ...] = tuple(sorted(PROVINCES, key=lambda p: PROFILES[p].price))


def non_iid_split(total_rows: int, seed: int) -> dict[str, pd.DataFrame]:
    """The market's stocks by price band, one band per province; every row exactly once."""
    shares = province_rows(total_rows)
    market = pd.concat(synthesize(total_rows, seed).values(), ignore_index=True)
    stocks = market.groupby("code")["close"].agg(["median", "size"])
    stocks = stocks.reset_index().sort_values(["median", "code"], kind="stable")
    # A stock goes to the band its middle row falls in, bands being the provinces' row shares.
    middle = stocks["size"].cumsum().to_numpy() - stocks["size"].to_numpy() / 2
    edges = np.cumsum([shares[p] for p in BAND_ORDER])[:-1]
    band = np.searchsorted(edges, middle, side="right")
    frames = {}
    for number, province in enumerate(BAND_ORDER):
        codes = stocks["code"][band == number]
        if codes.empty:
            raise DataError(f"too few stocks for nine price bands at {total_rows:,} rows")
        frame = market[market["code"].isin(codes)]
        frames[province] = frame.sort_values(["code", "date"], kind="stable", ignore_index=True)
    return {province: frames[province] for province in PROVINCES}
