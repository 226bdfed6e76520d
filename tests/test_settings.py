"""Typed task settings survive the trip through the proto config map, and a bad one is named."""

import numpy as np
import pytest

from common import preprocess
from common.data import synthesize_province
from common.settings import DataSettings, FoldSettings, SettingsError, TaskContext
from common.wire import from_config, to_config


def over_the_wire(values: dict) -> dict:
    return from_config(to_config(values))


def test_settings_come_back_as_they_were_sent():
    data = DataSettings("paper", 0.25, 7)
    fold = FoldSettings(5, 2)
    config = over_the_wire({**data.to_config(), **fold.to_config(), "model": "lr"})
    assert DataSettings.from_config(config) == data
    assert FoldSettings.from_config(config) == fold
    assert FoldSettings.from_config(data.to_config()) == FoldSettings()  # no folds asked


def test_the_task_context_is_the_federations_statistics():
    raw = synthesize_province("hubei", 3000, 1)
    split = preprocess.split(raw, "next-day", 0.2, 0)
    sums = preprocess.statistics(split.x_train, split.y_train)
    stats = preprocess.GlobalStatistics.from_sums([*split.features, preprocess.TARGET], [sums])
    context = TaskContext.from_statistics(stats)
    assert context.train_rows == len(split.y_train)
    close = split.features.index("close")
    assert context.close_mean == pytest.approx(split.x_train[:, close].mean())
    assert context.target_std == pytest.approx(split.y_train.std(), rel=1e-6)
    change = split.y_train - split.x_train[:, close]
    assert context.change_std == pytest.approx(change.std(), rel=1e-6)
    assert TaskContext.from_config(over_the_wire(context.to_config())) == context
    assert np.isfinite(context.feature_variance) and context.feature_variance > 0


def test_a_missing_or_mistyped_setting_is_refused_by_name():
    good = DataSettings("next-day", 0.2, 0).to_config()
    with pytest.raises(SettingsError, match="lacks the setting 'seed'"):
        DataSettings.from_config({k: v for k, v in good.items() if k != "seed"})
    with pytest.raises(SettingsError, match=r"'seed' must be int, got 0\.5"):
        DataSettings.from_config({**good, "seed": 0.5})
    with pytest.raises(SettingsError, match="'cv_folds' must be int, got True"):
        FoldSettings.from_config({"cv_folds": True})
    with pytest.raises(SettingsError, match="'setting' must be str"):
        DataSettings.from_config({**good, "setting": 1})
    # An integer is a number: a test fraction of 1 reads as 1.0 (the server refuses it earlier).
    assert DataSettings.from_config({**good, "test_fraction": 1}).test_fraction == 1.0
