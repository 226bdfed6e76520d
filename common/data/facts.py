"""The stylised facts of daily bars, measured the same way on any raw frame, synthetic or real.

They are what the synthetic market is calibrated to (docs/market.md): daily returns nearly
unpredictable, their volatility clustered, their tails fat.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def stylised_facts(raw: pd.DataFrame) -> dict[str, float]:
    """Lag-1 autocorrelation of traded days' log close-to-close returns within a stock, of
    their absolute values (volatility clustering), and their excess kurtosis, pooled."""
    frame = raw.sort_values(["code", "date"], kind="stable")
    close = frame["close"].where(frame["paused"] == 0)
    returns = np.log(close / close.groupby(frame["code"]).shift())
    pairs = pd.DataFrame({"r": returns, "lag": returns.groupby(frame["code"]).shift()}).dropna()
    return {
        "return_autocorrelation": float(np.corrcoef(pairs["r"], pairs["lag"])[0, 1]),
        "abs_return_autocorrelation": float(
            np.corrcoef(pairs["r"].abs(), pairs["lag"].abs())[0, 1]
        ),
        "excess_kurtosis": float(pairs["r"].kurt()),
        "returns": float(len(pairs)),
    }
