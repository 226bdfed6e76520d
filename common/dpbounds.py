"""Public per-column bounds for differential privacy on the statistics (`--dp-bounds FILE`).

A release's sensitivity is what one row can move it by, and a row of prices and volumes can
move a sum without limit unless each column is clipped to a range fixed in advance. The range
must be public knowledge (a fact about the market, such as its price limits), never derived
from any province's rows, or the bound itself would leak them. The operator states them in a
TOML file; the embedded market's is committed beside its generator (common/data/dp-bounds.toml,
its ranges justified in docs/dp.md):

    [columns]            # every feature a run may read, by name
    close = [0.0, 2000.0]
    [target]             # the target, by forecast quantity (common/quantity.py)
    price = [0.0, 2000.0]
    change = [-10.0, 10.0]

Forecasting tomorrow's price with today's close among the features, the target's statistics
are released as its move from today's close (`MOVE`), in the change's range: the move's sums
and the price's are one public linear map apart (common/dpstats.py, `from_move`), and a move's
range is narrow where a price's is wide, so the same noise costs the fit far less. A file
without a change's range releases the price in its own range, as before.

A file that is not TOML, lacks a table or a column the run needs, or gives a range that is not
two finite numbers lo < hi is refused with the reason (BoundsError) before anything runs.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

from common import quantity
from common.preprocess import TARGET

DEFAULT = Path(__file__).parent / "data" / "dp-bounds.toml"
# The name of the target's column when a price is released as its move from today's close.
MOVE = f"{TARGET} - close"
Ranges = dict[str, tuple[float, float]]


class BoundsError(ValueError):
    """A bounds file that cannot be used, with the reason."""


def load(path: Path) -> tuple[Ranges, Ranges]:
    """The file's feature ranges and target ranges (by forecast quantity), each checked."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise BoundsError(f"--dp-bounds {path}: cannot read it: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise BoundsError(f"--dp-bounds {path}: not TOML: {error}") from None
    unknown = sorted(set(document) - {"columns", "target"})
    if unknown:
        raise BoundsError(f"--dp-bounds {path}: unknown table(s) {', '.join(unknown)}")
    return _table(path, document, "columns"), _table(path, document, "target")


def _table(path: Path, document: dict, name: str) -> Ranges:
    table = document.get(name)
    if not isinstance(table, dict) or not table:
        raise BoundsError(f"--dp-bounds {path}: needs a [{name}] table of name = [lo, hi]")
    return {key: _range(path, f"{name}.{key}", value) for key, value in table.items()}


def _range(path: Path, where: str, value: object) -> tuple[float, float]:
    numbers = value if isinstance(value, list) else []
    if len(numbers) != 2 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in numbers
    ):
        raise BoundsError(f"--dp-bounds {path}: {where} must be [lo, hi], two numbers")
    lo, hi = float(numbers[0]), float(numbers[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise BoundsError(f"--dp-bounds {path}: {where} must be finite, got [{lo:g}, {hi:g}]")
    if lo >= hi:
        raise BoundsError(f"--dp-bounds {path}: {where} needs lo < hi, got [{lo:g}, {hi:g}]")
    return lo, hi


def for_columns(
    path: Path, features: list[str], forecast: str, setting: str = "next-day"
) -> Ranges:
    """The ranges of z = [features, target] in that order, the target's for `forecast`, or
    for tomorrow's price, with today's close among the features and a change's range in the
    file, its move's (`MOVE`); refused if the file lacks any of them."""
    columns, target = load(path)
    missing = [c for c in features if c not in columns]
    if missing:
        raise BoundsError(
            f"--dp-bounds {path}: [columns] lacks a range for {', '.join(missing)}, which "
            "this run's features read"
        )
    moves = forecast == quantity.DEFAULT and setting == "next-day" and "close" in features
    if moves and "change" in target:
        return {**{c: columns[c] for c in features}, MOVE: target["change"]}
    if forecast not in target:
        raise BoundsError(
            f"--dp-bounds {path}: [target] lacks a range for the {forecast} (--forecast {forecast})"
        )
    return {**{c: columns[c] for c in features}, TARGET: target[forecast]}


def move_from(ranges: Ranges) -> int | None:
    """The column of today's close if the ranges release the target as its move from it."""
    names = list(ranges)
    return names.index("close") if names[-1] == MOVE and "close" in names else None


def to_text(ranges: Ranges) -> str:
    """The ranges as a task carries them: a JSON object in the columns' order."""
    return json.dumps({name: list(bounds) for name, bounds in ranges.items()})


def from_text(text: str) -> Ranges:
    """The ranges a task carries, refused unless each is finite with lo < hi."""
    try:
        ranges = {name: (float(lo), float(hi)) for name, (lo, hi) in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise BoundsError(f"the task's dp_bounds cannot be read: {error}") from None
    if not all(math.isfinite(lo) and math.isfinite(hi) and lo < hi for lo, hi in ranges.values()):
        raise BoundsError("the task's dp_bounds hold a range that is not finite with lo < hi")
    return ranges


def limits(ranges: Ranges) -> tuple[list[float], list[float]]:
    """lo and hi of every column, in the columns' order."""
    return [lo for lo, _ in ranges.values()], [hi for _, hi in ranges.values()]
