"""The run's disclosure report: for each phase, what the server learns and what each province does.

Each strategy, and each privacy mode wrapped around one, says what the phases it runs let out
(`Strategy.disclosure`), beside the code that sends them, so that the report follows what the
run does. results.json keeps it under `disclosure`; the summary prints it as a table.
"""

from __future__ import annotations

from collections.abc import Mapping

PHASES = ("dates", "statistics", "updates", "metrics", "analysis")

Disclosure = dict[str, dict[str, str]]  # phase -> {"server": ..., "provinces": ...}


def entry(server: str, provinces: str) -> dict[str, str]:
    return {"server": server, "provinces": provinces}


SCALER = "the federation's mean and standard deviation of every column (the scaler)"
# The next-day setting's agreement on one date cutoff (common/timesplit.py); a run in the
# paper setting (a random split) has no such phase and reports none.
CUTOFF = "the federation's first day and its cutoff date"
DATE_COUNTS = "the rows per year, and per day of the years the first day and the cutoff fall in"

IN_THE_CLEAR: Disclosure = {
    "dates": entry(
        "each province's count of next-day rows in each calendar year, and on each day of the "
        "(at most three) years its first day and the cutoff fall in, in the clear",
        CUTOFF,
    ),
    "statistics": entry(
        "each province's row count n, column sums Σz and cross products Σzzᵀ, in the clear",
        SCALER,
    ),
    "updates": entry(
        "each province's update, in the clear, every round", "the global model after each round"
    ),
    "metrics": entry(
        "each province's training and test MSE and row counts, in the clear",
        "nothing of any other province",
    ),
    "analysis": entry("nothing: no analysis was asked for", "nothing"),
}


def table(disclosure: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The report as lines of text: each phase, then what the server and a province learn."""
    width = max(len(phase) for phase in [*disclosure, "phase"])
    lines = [f"{'phase':<{width}}  who learns what"]
    for phase, learned in disclosure.items():
        lines.append(f"{phase:<{width}}  server: {learned['server']}")
        lines.append(f"{'':<{width}}  each province: {learned['provinces']}")
    return lines
