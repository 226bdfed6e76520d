"""The quantity a forecast is made in (`--forecast`): one definition for every framework.

The paper scores tomorrow's average price (`price`, Table 2's quantity). A price MSE is mostly
the size of the price level, which today's close already gives away, so a forecaster also looks
at what is left once today's close is taken off: the `change` (tomorrow's price − today's close,
in yuan) and the `return` (tomorrow's price / today's close − 1, no unit). Today's close is
known when the forecast is made, so each quantity is a fixed transform of the price row by row,
and the generator's oracle transforms exactly. Every province, the server and the baselines
derive targets, naive forecasts and the oracle from here.
"""

from __future__ import annotations

import numpy as np

QUANTITIES = ("price", "change", "return")
DEFAULT = "price"
# What each quantity is, and the unit its MSE is in, for results files and tables.
DESCRIPTIONS = {
    "price": "the average price (tomorrow's in the next-day setting), in yuan",
    "change": "tomorrow's average price minus today's close, in yuan",
    "return": "tomorrow's average price over today's close, minus 1 (no unit)",
}
MSE_UNITS = {"price": "yuan²", "change": "yuan²", "return": "squared return (no unit)"}


def check(quantity: str, setting: str = "next-day") -> str:
    """`quantity`, refused with the ones there are if unknown, or outside the next-day setting
    (the paper setting's target is the same day's price: there is no today's close to forecast
    from)."""
    if quantity not in QUANTITIES:
        raise ValueError(
            f"unknown forecast quantity {quantity!r}; expected one of: {', '.join(QUANTITIES)}"
        )
    if quantity != DEFAULT and setting != "next-day":
        raise ValueError(
            f"the {quantity} is tomorrow's price against today's close: use the next-day setting"
        )
    return quantity


def from_price(price: np.ndarray, close: np.ndarray, quantity: str) -> np.ndarray:
    """`price` (tomorrow's, or a forecast or expectation of it) in the quantity's units, given
    each row's close today. A return needs a positive close (adjusted prices may not be)."""
    if quantity == "change":
        return price - close
    if quantity == "return":
        if not np.all(close > 0):
            bad = int(np.sum(~(close > 0)))
            raise ValueError(
                f"--forecast return divides by today's close, and {bad} row(s) have a close of "
                "0 or below (adjusted prices); use --forecast change or price"
            )
        return price / close - 1.0
    return price


def no_change(close: np.ndarray, quantity: str) -> np.ndarray:
    """The quantity's value if tomorrow's price were today's close: the close itself for the
    price, zero for the change and the return. Both naive forecasts of a change or a return
    are this zero, and models that learn a move learn it from here."""
    return close if quantity == DEFAULT else np.zeros_like(close)


def record(quantity: str) -> dict[str, str]:
    """The quantity as results files state it: its name, what it is, and its MSE's unit."""
    return {
        "quantity": quantity,
        "meaning": DESCRIPTIONS[quantity],
        "mse_unit": MSE_UNITS[quantity],
    }


def of(results: dict) -> str:
    """The quantity a results file's scores are in; a file from before `--forecast`: the price."""
    return (results.get("forecast") or {}).get("quantity", DEFAULT)


def label(quantity: str) -> str:
    """One line for a table's reader: what was forecast, and the unit of its MSE."""
    return f"forecast {quantity}: {DESCRIPTIONS[quantity]}; MSE in {MSE_UNITS[quantity]}"
