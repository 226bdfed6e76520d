"""A-share market rules shared by the synthetic market and the loaders."""

import re

import numpy as np
import pandas as pd

# Tushare suffixes → JoinQuant exchange codes (Shanghai, Shenzhen).
_EXCHANGES = {"SH": "XSHG", "SZ": "XSHE", "XSHG": "XSHG", "XSHE": "XSHE"}
_CODE = re.compile(r"(\d{6})\.([A-Za-z]+)")
JOINQUANT_CODE = re.compile(r"\d{6}\.(XSHG|XSHE)")

# ChiNext moved from ±10 % to ±20 % daily limits on this day; STAR (688) was ±20 % from the start.
CHINEXT_REFORM = pd.Timestamp("2020-08-24")


def round_price(values: np.ndarray) -> np.ndarray:
    """Round to the fen (0.01 yuan) half up, as the exchanges do (np.round rounds half to even)."""
    return np.floor(np.asarray(values) * 100 + 0.5 + 1e-7) / 100


def joinquant_code(code: str) -> str | None:
    """`600000.SH` or `600000.XSHG` → `600000.XSHG`; None for other exchanges or non-codes."""
    match = _CODE.fullmatch(code.strip())
    if match is None or match[2].upper() not in _EXCHANGES:
        return None
    return f"{match[1]}.{_EXCHANGES[match[2].upper()]}"


def limit_rate(codes: pd.Series, dates: pd.Series, st: pd.Series) -> np.ndarray:
    """Daily price-limit rate per row: 20 % on STAR and reformed ChiNext, else 5 % ST, else 10 %."""
    wide = codes.str.startswith("688") | (
        codes.str.startswith(("300", "301")) & (dates >= CHINEXT_REFORM)
    )
    return np.where(wide, 0.20, np.where(st, 0.05, 0.10))
