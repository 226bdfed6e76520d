"""The run's disclosure report: for each phase, what the server learns and what each province does.

Each strategy, and each privacy mode wrapped around one, says what the phases it runs let out
(`Strategy.disclosure`), beside the code that sends them, so that the report follows what the
run does. Each round says the same of its own updates (`Strategy.round_disclosure`: who sent
them, who dropped, the noise and ε to that round), written into the round's record by the
schedule that gathered them; `by_rounds` groups identical consecutive rounds. Model
selection's rounds say it as well, each fold's kept with its candidate and gathered by
`cross_validation`. results.json keeps it under `disclosure` (the rounds' under
`disclosure.rounds`, cross-validation's under `disclosure.cross_validation`); the summary prints
it as a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PHASES = ("dates", "statistics", "updates", "metrics", "analysis")

Disclosure = dict[str, dict[str, str]]  # phase -> {"server": ..., "provinces": ...}


def entry(server: str, provinces: str) -> dict[str, str]:
    return {"server": server, "provinces": provinces}


SCALER = "the federation's mean and standard deviation of every column (the scaler)"
# The next-day setting's agreement on one date cutoff (common/timesplit.py); a run in the
# paper setting (a random split) has no such phase and reports none.
CUTOFF = "the federation's first day and its cutoff date"
DATE_COUNTS = "the rows per year, and per day of the years the first day and the cutoff fall in"
# Under DP, per bin of as many days as the noise calls for (common/timesplit.py).
BINNED_DATE_COUNTS = (
    "the rows per year, and per bin of days (one day or more) of the years the first day and "
    "the cutoff fall in"
)

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
    "updates": entry("each province's update, in the clear", "the global model after each round"),
    "metrics": entry(
        "each province's training and test MSE and row counts, in the clear",
        "nothing of any other province",
    ),
    "analysis": entry("nothing: no analysis was asked for", "nothing"),
}


def contributors(asked: Sequence[str], sent: Sequence[str]) -> str:
    """Who sent a round's updates, of those asked: the ones missing named."""
    missing = sorted(set(asked) - set(sent))
    among = f"{len(sent)} of {len(asked)} provinces asked"
    return f"{among} ({', '.join(missing)} sent none)" if missing else among


def by_rounds(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rounds' disclosure entries, identical consecutive ones as one: each with its first
    and last round, and under DP the ε spent to each of the two."""
    groups: list[dict[str, Any]] = []
    for record in records:
        said = record.get("disclosure")
        if said is None:
            continue
        last = groups[-1] if groups else None
        same = last is not None and all(last[k] == said[k] for k in ("server", "provinces"))
        if same and last["last_round"] == record["round"] - 1:
            last["last_round"] = record["round"]
            if "epsilon" in said:
                last["epsilon"][1] = said["epsilon"]
            continue
        group = {"first_round": record["round"], "last_round": record["round"], **said}
        if "epsilon" in said:
            group["epsilon"] = [said["epsilon"], said["epsilon"]]
        groups.append(group)
    return groups


def cross_validation(selection: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Model selection's rounds, as its report keeps them: each candidate's folds (counted from
    1), each with its rounds' entries grouped (`by_rounds`)."""
    return [
        {"params": candidate["params"], "fold": fold, "rounds": said}
        for candidate in selection["candidates"]
        for fold, said in enumerate(candidate.get("disclosure", []), start=1)
    ]


def table(disclosure: Mapping[str, Any]) -> list[str]:
    """The report as lines of text: each phase, then what the server and a province learn;
    the rounds' updates, grouped, beneath the run's, and cross-validation's beneath them."""
    phases = {k: v for k, v in disclosure.items() if k not in ("rounds", "cross_validation")}
    width = max(len(phase) for phase in [*phases, "phase"])
    lines = [f"{'phase':<{width}}  who learns what"]
    for phase, learned in phases.items():
        lines.append(f"{phase:<{width}}  server: {learned['server']}")
        lines.append(f"{'':<{width}}  each province: {learned['provinces']}")
        if phase == "updates":
            lines += [f"{'':<{width}}  {line}" for line in _rounds(disclosure.get("rounds", []))]
            for fold in disclosure.get("cross_validation", []):
                params = fold["params"] or "(the flags' setting)"
                named = f"cross-validation {params}, fold {fold['fold']}"
                lines += [f"{'':<{width}}  {named}, {line}" for line in _rounds(fold["rounds"])]
    return lines


def _rounds(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for group in groups:
        first, last = group["first_round"], group["last_round"]
        named = f"round {first}" if first == last else f"rounds {first}–{last}"
        spent = group.get("epsilon")
        if spent is not None:
            low, high = (f"{e:.3g}" if e is not None else "∞" for e in spent)
            named += f" (ε {low})" if first == last else f" (ε {low} to {high})"
        lines.append(f"{named}: server: {group['server']}; each province: {group['provinces']}")
    return lines
