"""Raw daily bars: the canonical frame, the synthetic market, and loaders for real exports."""

from common.data.loaders import load_joinquant, load_province, load_tushare, write_provinces
from common.data.schema import RAW_COLUMNS, DataError, validate_raw
from common.data.synthetic import synthesize, synthesize_province

__all__ = [
    "RAW_COLUMNS",
    "DataError",
    "load_joinquant",
    "load_province",
    "load_tushare",
    "synthesize",
    "synthesize_province",
    "validate_raw",
    "write_provinces",
]
