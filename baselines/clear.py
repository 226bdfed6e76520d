"""A federation's saved model scored in the clear on the union of its provinces' test rows.

Under DP the MSE a run records is the one DP releases (each province's clipped, noised,
clamped), not how good the model is. Whoever holds every province's rows (the reproduction,
which generated them) can score the model itself: this loads the run's `model.npz` and
forecasts each province's test rows with the client's own prediction for the model (found
through the registry), on the rows, features, target and scaler the run used, all read from
its results file, and scores them with the baselines' scorer (`results.score_splits`), pooled
by test rows: the MSE over the union of the test rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from baselines import results as scoring
from baselines.data import DataOptions, split_province, with_cutoff
from client.groups import TaskGroups
from common import preprocess, quantity
from common.hyperparameters import ALL_OPTIONS, defaults
from common.model_settings import ModelTask
from common.registry import model_spec
from common.scores import Evaluation
from common.settings import DataSettings


def run_data(results: Mapping[str, Any]) -> DataOptions:
    """The rows' preparation and split as the run recorded them: its setting, test share,
    seed, feature set and quantity, and in the next-day setting its agreed first day and
    cutoff (under DP agreed from noised counts, so not necessarily the clear union's)."""
    config, split = results["config"], results["split"]
    options = DataOptions(
        setting=results["setting"],
        test_fraction=float(config["test_fraction"]),
        split_seed=int(config["seed"]),
        feature_set=results.get("features", "paper"),
        forecast=quantity.of(results),
    )
    return (
        with_cutoff(options, split["start"], split["cutoff"])
        if split["kind"] == "time"
        else options
    )


def task_groups(results: Mapping[str, Any], data: DataOptions) -> TaskGroups:
    """The settings a province's evaluation task of this run carried: the data settings, the
    model's name and own hyperparameters as the server recorded them, the federation's
    numbers (`task_context`); everything else at its default."""
    model = results["model"]
    prefix = model_spec(model).hyperparameters
    own = {
        name: ALL_OPTIONS[name].parse(value)
        for name, value in results["config"].items()
        if prefix and name.startswith(prefix) and name in ALL_OPTIONS
    }
    settings = DataSettings(
        data.setting,
        data.test_fraction,
        data.split_seed,
        data.feature_set,
        data.split_start,
        data.split_cutoff,
        data.forecast,
    )
    return TaskGroups.parse(
        {
            **defaults(),
            **own,
            **ModelTask(model).to_config(),
            **results["task_context"],
            **settings.to_config(),
        }
    )


def score(
    results: Mapping[str, Any], folder: Path, frames: Mapping[str, pd.DataFrame]
) -> Evaluation:
    """The run's final model (in `folder`, beside its results) scored in the clear on every
    province's test rows from `frames` (each province's raw rows); ValueError when the
    provinces or their test rows are not the ones the run scored."""
    data = run_data(results)
    splits = {province: split_province(raw, data) for province, raw in frames.items()}
    recorded = results["final"]["per_client"]
    if set(recorded) != set(splits):
        raise ValueError(
            f"the run scored provinces {sorted(recorded)}, the rows given are of {sorted(splits)}"
        )
    for province, split in splits.items():
        if recorded[province]["n_test"] != len(split.y_test):
            raise ValueError(
                f"{province}: the run scored {recorded[province]['n_test']} test rows, these "
                f"rows split into {len(split.y_test)}: not the run's rows or split"
            )
    trainer = model_spec(results["model"]).client_trainer()
    groups = task_groups(results, data)
    stats = preprocess.GlobalStatistics.from_record(results["statistics"], data.forecast)
    mean, scale = stats.scaler()
    with np.load(folder / results["final"]["model_file"], allow_pickle=False) as stored:
        parameters = {name: stored[name] for name in stored.files}

    def predict(x: np.ndarray) -> np.ndarray:
        inputs = preprocess.scale(x, mean, scale) if trainer.scaled else x
        return trainer.predict(parameters, inputs, groups)

    return scoring.score_splits(predict, splits)
