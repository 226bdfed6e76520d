"""Settings every task carries, as typed values: put into the task config in one place
(`to_config`), read back from it in one place (`from_config`).

A task config is a flat map of names to numbers, text and flags (proto ConfigValue). A setting
that is missing, or of the wrong kind, is refused with its name rather than read as a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from functools import cache
from typing import Any, Self

import numpy as np

from common import quantity
from common.preprocess import GlobalStatistics, features_for
from common.timesplit import YEAR_DAYS
from common.wire import ConfigScalar

_KINDS = {"str": str, "int": int, "float": float, "bool": bool}


class SettingsError(ValueError):
    """A task's config lacks a setting, or holds one of the wrong kind."""


def _kinds(annotation: str) -> tuple[type, ...]:
    """The kinds a field's annotation allows ('str | float': either; None: it may be unset)."""
    return tuple(_KINDS[part.strip()] for part in annotation.split("|") if part.strip() != "None")


def typed(name: str, value: ConfigScalar, kinds: tuple[type, ...]) -> ConfigScalar:
    """`value` as one of `kinds`: an integer passes for a number, never a flag for an integer;
    SettingsError naming the setting `name` otherwise."""
    if type(value) in kinds:
        return value
    if float in kinds and type(value) is int:
        return float(value)
    wanted = " or ".join(kind.__name__ for kind in kinds)
    raise SettingsError(f"task setting {name!r} must be {wanted}, got {value!r}")


@cache
def _fields(group: type) -> tuple[tuple[str, tuple[type, ...], bool], ...]:
    """Each field of a settings group: its name, the kinds it allows and whether it must be
    set. Read once a group rather than from the annotations at every task, which read a
    dozen groups (docs/performance.md: about a tenth of a small task's work on the client)."""
    return tuple(
        (f.name, _kinds(str(f.type)), f.default is MISSING)
        for f in fields(group)  # type: ignore[arg-type]
    )


class TaskSettings:
    """A dataclass of settings whose fields are config keys; mixed into each group below.

    A field that may be None is left out of the config while it is None, so a task carries
    only the settings it has."""

    def to_config(self) -> dict[str, ConfigScalar]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_config(cls, config: Mapping[str, ConfigScalar]) -> Self:
        values: dict[str, Any] = {}
        for name, kinds, required in _fields(cls):
            if name in config:
                values[name] = typed(name, config[name], kinds)
            elif required:
                raise SettingsError(f"the task's config lacks the setting {name!r}")
        return cls(**values)

    @classmethod
    def sent(cls, config: Mapping[str, ConfigScalar]) -> Self | None:
        """The group if the task carries it (None if it carries none of its settings); a group
        sent in part is refused as `from_config` refuses it."""
        if not any(name in config for name, _, _ in _fields(cls)):
            return None
        return cls.from_config(config)


@dataclass(frozen=True)
class RoundNumber(TaskSettings):
    """The round (asynchronously: the version) a task is for; what changes from round to round
    on the client (a mini-batch order, the svm's step size) is seeded or scaled by it."""

    round: int


@dataclass(frozen=True)
class DayCounts(TaskSettings):
    """The date phase's question, asked before any split (common/timesplit.py): a province's
    rows per calendar year (`day_counts` 'years'), or per day of the years listed, or, with
    `day_counts_width`, per bin of that many days (under DP, where one noise draw a count makes
    wider bins the better reading). Under dp-local, `day_counts_noise` is the noise multiplier
    σ the province noises its counts at (common/dpstats.py); it is left out otherwise."""

    day_counts: str
    day_counts_years: str | None = None
    day_counts_noise: float | None = None
    day_counts_width: int | None = None

    def __post_init__(self) -> None:
        if self.day_counts not in ("years", "days"):
            raise SettingsError(
                f"task setting 'day_counts' must be 'years' or 'days', got {self.day_counts!r}"
            )
        if self.day_counts == "days" and not self.day_counts_years:
            raise SettingsError("the task's config lacks the setting 'day_counts_years'")
        if not 1 <= self.width() <= YEAR_DAYS:
            raise SettingsError(
                f"task setting 'day_counts_width' must be 1 to {YEAR_DAYS} days, "
                f"got {self.day_counts_width}"
            )

    @classmethod
    def per_day(cls, years: list[int], width: int = 1) -> DayCounts:
        """Rows per day of `years`, or per bin of `width` days (left out of the config at 1)."""
        return cls(
            "days", ",".join(map(str, years)), day_counts_width=None if width == 1 else width
        )

    def width(self) -> int:
        """The days each count covers."""
        return 1 if self.day_counts_width is None else self.day_counts_width

    def years(self) -> list[int]:
        """The years whose days are asked for."""
        try:
            return [int(year) for year in (self.day_counts_years or "").split(",")]
        except ValueError:
            raise SettingsError(
                f"task setting 'day_counts_years' must list years, got {self.day_counts_years!r}"
            ) from None


@dataclass(frozen=True)
class DataSettings(TaskSettings):
    """How every province splits its rows, the same way: the setting, test share and seed, the
    feature set it computes from them (common/features.py), in the next-day setting the
    federation's first day and cutoff date (common/timesplit.py; empty until agreed), and the
    quantity targets and scores are in (common/quantity.py; a config without it is the price's,
    as every config was before)."""

    setting: str
    test_fraction: float
    seed: int
    features: str = "paper"
    split_start: str = ""
    split_cutoff: str = ""
    forecast: str = quantity.DEFAULT

    def columns(self) -> list[str]:
        """The feature columns every province computes, in order."""
        return features_for(self.setting, self.features)


@dataclass(frozen=True)
class FoldSettings(TaskSettings):
    """Cross-validation: train outside fold `cv_fold` of `cv_folds`, score on it (0: no folds);
    by time, the training days keep `cv_embargo` days clear of the fold's (common/crossval.py)."""

    cv_folds: int = 0
    cv_fold: int = 0
    cv_embargo: int = 0


@dataclass(frozen=True)
class TaskContext(TaskSettings):
    """The federation's numbers every task carries, for the models that need them: training
    rows N, today's close as scaled, the mean and deviation of the target and of its change
    from the no-change value (today's close for a price; for a change or a return, which are
    already moves, the target itself; models learn them standardised), and the variance of the
    scaled features over all entries (gamma='scale'; the scaled features' means are all 0)."""

    train_rows: int
    close_mean: float
    close_scale: float
    target_mean: float
    target_std: float
    change_mean: float
    change_std: float
    feature_variance: float

    @classmethod
    def from_statistics(cls, stats: GlobalStatistics) -> TaskContext:
        mean, scale = stats.scaler()
        close, target = stats.columns.index("close"), len(stats.columns) - 1
        std = stats.std
        change_mean, change_std = stats.move_moments()
        return cls(
            train_rows=int(stats.count),
            close_mean=float(mean[close]),
            close_scale=float(scale[close]),
            target_mean=float(stats.mean[target]),
            target_std=float(std[target]) or 1.0,
            change_mean=change_mean,
            change_std=change_std or 1.0,
            feature_variance=float(np.mean((std[:-1] / scale) ** 2)),
        )
