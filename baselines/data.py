"""The rows every baseline trains on, prepared exactly as the federation prepares them.

Each province cleans and splits its own rows (`common.preprocess.split`), and scaling uses the
global mean and deviation of all provinces' training rows, derived from per-province sums as
the server derives them. The centralised job and each Spark partition call these same functions,
so all three frameworks see the same training and test rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from common import preprocess, quantity, timesplit
from common.crossval import TimeFolds
from common.data import load_province, synthesize, write_provinces
from common.data.loaders import province_path
from common.data.synthetic import DEFAULT_ROWS, DEFAULT_SEED
from common.provinces import PROVINCES
from common.settings import TaskContext
from common.tensors import Arrays


@dataclass(frozen=True)
class DataOptions:
    """Where the rows come from and how they are split: the federation's data settings."""

    data: str | None = None  # folder (or Spark URL) of <province>.parquet; None: synthetic
    rows: int = DEFAULT_ROWS
    seed: int = DEFAULT_SEED
    setting: str = "next-day"
    test_fraction: float = 0.2
    split_seed: int = 0
    feature_set: str = "paper"  # common/features.py
    # next-day: the union's first day and date cutoff (`with_cutoff`); empty until agreed
    split_start: str = ""
    split_cutoff: str = ""
    forecast: str = quantity.DEFAULT  # the quantity targets and scores are in (common/quantity.py)

    def split(self) -> dict:
        """The split as results.json states it (common/timesplit.py)."""
        return timesplit.record(
            self.setting, self.test_fraction, self.split_seed, self.split_start, self.split_cutoff
        )

    @property
    def features(self) -> list[str]:
        return preprocess.features_for(self.setting, self.feature_set)

    def folds_by_time(self, embargo: int) -> TimeFolds | None:
        """Cross-validation's blocks of days once the split's cutoff is agreed (next-day);
        None in the paper setting, whose folds are random (common/crossval.py)."""
        return (
            TimeFolds(self.split_start, self.split_cutoff, embargo) if self.split_cutoff else None
        )


@dataclass(frozen=True)
class Scaling:
    """The federation's scaler and the global numbers its tasks carry (`task`: rows, the close's
    scaling, the target's and its change's moments, the scaled features' variance), for the
    forecast quantity `forecast`."""

    mean: np.ndarray
    scale: np.ndarray
    train_rows: int
    close_index: int
    task: dict[str, float]
    forecast: str = quantity.DEFAULT

    @classmethod
    def from_sums(
        cls, features: list[str], sums: Iterable[Arrays], forecast: str = quantity.DEFAULT
    ) -> Scaling:
        columns = [*features, preprocess.TARGET]
        stats = preprocess.GlobalStatistics.from_sums(columns, list(sums), forecast)
        mean, scale = stats.scaler()
        task = {k: float(v) for k, v in TaskContext.from_statistics(stats).to_config().items()}
        return cls(mean, scale, stats.count, features.index("close"), task, forecast)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return preprocess.scale(x, self.mean, self.scale)

    def close(self, x: np.ndarray) -> np.ndarray:
        """Today's close in yuan, from scaled rows."""
        return x[:, self.close_index] * self.scale[self.close_index] + self.mean[self.close_index]

    def no_change(self, x: np.ndarray, scaled: bool = True) -> np.ndarray:
        """The forecast quantity with no move from today's close (common/quantity.py), from
        scaled rows or raw ones: what the models that learn a move start from."""
        close = self.close(x) if scaled else x[:, self.close_index]
        return quantity.no_change(close, self.forecast)


def split_province(raw: pd.DataFrame, options: DataOptions) -> preprocess.Split:
    return preprocess.split(
        raw,
        options.setting,
        options.test_fraction,
        options.split_seed,
        options.feature_set,
        options.split_cutoff,
        options.forecast,
    )


def with_cutoff(options: DataOptions, start: str, cutoff: str) -> DataOptions:
    """`options` with the federation's first day and date cutoff (common/timesplit.py)."""
    return replace(options, split_start=start, split_cutoff=cutoff)


def add_sums(a: Arrays, b: Arrays) -> Arrays:
    """Statistics of two sets of rows together: the sums simply add (a reduce step)."""
    return {name: a[name] + b[name] for name in a}


@dataclass(frozen=True)
class Prepared:
    """Every province's split, the federation's scaler over them, and the data options with
    the split's agreed cutoff."""

    splits: dict[str, preprocess.Split]
    scaling: Scaling
    options: DataOptions


def prepare(frames: Mapping[str, pd.DataFrame], options: DataOptions) -> Prepared:
    if options.setting == "next-day":  # the union's cutoff, by the rule the server uses
        dates = np.concatenate([preprocess.next_day_dates(raw) for raw in frames.values()])
        options = with_cutoff(options, *timesplit.agree_dates(dates, options.test_fraction))
    splits = {name: split_province(raw, options) for name, raw in frames.items()}
    sums = [preprocess.statistics(s.x_train, s.y_train) for s in splits.values()]
    return Prepared(splits, Scaling.from_sums(options.features, sums, options.forecast), options)


def load_frames(options: DataOptions) -> dict[str, pd.DataFrame]:
    """Raw rows of every province: from `options.data`, or the synthetic market as clients make it.

    With a folder, the provinces it holds files for take part (as clients that have data would).
    """
    if options.data is None:
        return synthesize(options.rows, options.seed)
    present = [p for p in PROVINCES if province_path(options.data, p).is_file()]
    if not present:
        raise FileNotFoundError(
            f"{options.data}: no <province>.parquet files; create them with "
            f"`python -m common.data synth --out {options.data}`"
        )
    return {province: load_province(options.data, province) for province in present}


def write_synthetic(out: Path, rows: int, seed: int) -> Path:
    """The synthetic market as <province>.parquet files, for jobs that read files (Spark)."""
    write_provinces(synthesize(rows, seed), out)
    return out
