"""Typed task settings survive the trip through the proto config map, and a bad one is named."""

import json
from typing import get_args, get_type_hints

import numpy as np
import pytest

from client.groups import TaskGroups
from client.local import LocalWork
from client.secagg import announcement
from client.tasks import perform
from common import preprocess, secagg
from common.analysis import AnalysisAsk
from common.data import synthesize_province
from common.hyperparameters import defaults
from common.model_settings import (
    ForestSettings,
    LocalTraining,
    MemberSeed,
    ModelTask,
    Shuffle,
    StartMetrics,
    SvmSettings,
)
from common.models.histgrow import TreeStep
from common.protection import Compression, DPNoise, DPScoring, HESession, Protection
from common.registry import model_spec
from common.settings import (
    DataSettings,
    DayCounts,
    FoldSettings,
    RoundNumber,
    SettingsError,
    TaskContext,
    TaskSettings,
)
from common.wire import from_config, to_config
from proto.fedstock.v1 import federation_pb2 as pb
from server.models import build_strategy
from tests.test_registry import OWN_EPOCHS


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


def test_model_settings_come_back_as_they_were_sent():
    options = defaults()
    sent = [
        ModelTask("rf"),
        LocalTraining(2, 0.05, 32, mu=0.1),
        Shuffle(7),
        MemberSeed(1003),
        ForestSettings.from_config(options),
        SvmSettings.from_config(options),
        SvmSettings.from_config({**options, "svm_gamma": 0.5}),
    ]
    for settings in sent:
        assert type(settings).from_config(over_the_wire(settings.to_config())) == settings


def test_an_unset_setting_is_not_sent_and_reads_back_unset():
    assert Shuffle().to_config() == {}
    assert "mu" not in LocalTraining(1, 0.02, 64).to_config()
    assert Shuffle.from_config({"round": 3}).sgd_seed is None
    assert LocalTraining.from_config({**LocalTraining(1, 0.02, 64).to_config()}).mu is None


def test_a_missing_or_mistyped_model_setting_is_refused_by_name():
    forest = ForestSettings.from_config(defaults()).to_config()
    with pytest.raises(SettingsError, match="lacks the setting 'rf_criterion'"):
        ForestSettings.from_config({k: v for k, v in forest.items() if k != "rf_criterion"})
    with pytest.raises(SettingsError, match="'rf_bootstrap' must be bool, got 1"):
        ForestSettings.from_config({**forest, "rf_bootstrap": 1})
    with pytest.raises(SettingsError, match="'svm_gamma' must be str or float, got True"):
        SvmSettings.from_config({**defaults(), "svm_gamma": True})
    with pytest.raises(SettingsError, match="'sgd_seed' must be int, got 'x'"):
        Shuffle.from_config({"sgd_seed": "x"})
    with pytest.raises(SettingsError, match="lacks the setting 'model'"):
        ModelTask.from_config({})
    with pytest.raises(SettingsError, match="lacks the setting 'random_state'"):
        MemberSeed.from_config(forest)


@pytest.mark.parametrize(("model", "prefix"), [("rf", "rf_"), ("svm", "svm_"), ("lr", "-")])
def test_a_models_tasks_carry_the_keys_they_always_carried(model, prefix):
    """The wire is unchanged: the model's name and every hyperparameter of its prefix."""
    config = build_strategy(model).model_config
    assert set(config) == {"model", *(name for name in defaults() if name.startswith(prefix))}


def test_lr_sgd_tasks_carry_its_local_training_and_no_pull_outside_fedprox():
    assert build_strategy("lr-sgd").model_config == {
        "model": "lr-sgd",
        "local_epochs": 1,
        "learning_rate": 0.02,
        "batch_size": 64,
    }


def test_protection_settings_come_back_as_they_were_sent():
    sent = [
        Protection("dp-local"),
        DPNoise(1.5, 0.8),
        DPScoring(4.0, 0.8),
        HESession("c0ffee"),
        Compression("topk", 0.25),
        TreeStep("level", 3, True),
        secagg.Announcement("s1", 9, 7, 1e3, "c1,c2", "wide", 4, 11),
        secagg.Seat(2),
        secagg.Unmasking("1,2,3", "4", "confirm"),
        secagg.Exchange(5),
    ]
    for settings in sent:
        assert type(settings).from_config(over_the_wire(settings.to_config())) == settings
    assert Protection().to_config() == {} and Protection.from_config({}).privacy is None


def test_a_group_is_read_only_if_sent_and_refused_if_sent_in_part():
    assert Compression.sent({"model": "lr"}) is None
    assert Compression.sent(Compression("int8", 0.1).to_config()) == Compression("int8", 0.1)
    with pytest.raises(SettingsError, match="lacks the setting 'topk_fraction'"):
        Compression.sent({"compression": "topk"})
    with pytest.raises(SettingsError, match="'dp_clip' must be float, got 'x'"):
        DPNoise.from_config({"dp_clip": "x", "dp_noise_multiplier": 1.0})
    with pytest.raises(SettingsError, match="lacks the setting 'secagg_session'"):
        secagg.Announcement.from_config({"secagg_clients": 3})
    with pytest.raises(SettingsError, match="'tree_index' must be int, got '1'"):
        TreeStep.from_config({"tree_step": "level", "tree_index": "1"})


# The keys every client signed its secure-aggregation keys over, in order, before the groups.
SIGNED_BEFORE = (
    "round",
    "secagg_session",
    "secagg_members",
    "secagg_clients",
    "secagg_neighbours",
    "secagg_graph_seed",
    "secagg_threshold",
    "secagg_bound",
    "secagg_encoding",
)


@pytest.mark.parametrize(
    "announced",
    [
        secagg.Announcement("s1", 9, 7, 1000.0, "a,b,c", "bounded", 4, 12345),
        secagg.Announcement("s2", 3, 2, 1.0),  # members, encoding and graph left unannounced
    ],
)
def test_the_signed_announcement_is_the_text_it_always_was(announced):
    config = over_the_wire({"round": 4, **announced.to_config(), **secagg.Seat(1).to_config()})
    before = json.dumps([str(config.get(key, "")) for key in SIGNED_BEFORE]).encode()
    assert announcement(TaskGroups.parse(config)) == before


def test_the_round_the_date_question_the_analysis_and_start_metrics_come_back_as_sent():
    sent = [
        RoundNumber(4),
        DayCounts("years"),
        DayCounts.per_day([2019, 2020]),
        AnalysisAsk(analysis_seed=3, personalise_pull=0.01),
        AnalysisAsk(7, 0.5, analysis_score_sums=1, importance_repeats=5, personalise_epochs=2),
        StartMetrics(True),
    ]
    for settings in sent:
        assert type(settings).from_config(over_the_wire(settings.to_config())) == settings
    assert DayCounts.per_day([2019, 2020]).years() == [2019, 2020]
    binned = DayCounts.per_day([2020], 17)
    assert DayCounts.from_config(over_the_wire(binned.to_config())).width() == 17
    assert DayCounts.per_day([2020]).width() == 1
    for width in (0, 367):
        with pytest.raises(SettingsError, match="'day_counts_width' must be 1 to 366 days"):
            DayCounts.from_config(
                {"day_counts": "days", "day_counts_years": "2020", "day_counts_width": width}
            )
    assert StartMetrics.from_config({}).start_metrics is False  # only q-FedAvg asks for them


def test_their_tasks_carry_the_keys_they_always_carried():
    assert RoundNumber(2).to_config() == {"round": 2}
    assert DayCounts("years").to_config() == {"day_counts": "years"}
    assert DayCounts.per_day([2019, 2021]).to_config() == {
        "day_counts": "days",
        "day_counts_years": "2019,2021",
    }
    assert AnalysisAsk(0, 0.01, 1, 5, 1).to_config() == {
        "analysis_score_sums": 1,
        "importance_repeats": 5,
        "personalise_epochs": 1,
        "personalise_pull": 0.01,
        "analysis_seed": 0,
    }
    assert StartMetrics(True).to_config() == {"start_metrics": True}


def test_a_missing_or_mistyped_round_question_or_analysis_setting_is_refused_by_name():
    with pytest.raises(SettingsError, match="lacks the setting 'round'"):
        RoundNumber.from_config({"model": "lr"})
    with pytest.raises(SettingsError, match="'round' must be int, got '2'"):
        RoundNumber.from_config({"round": "2"})
    with pytest.raises(SettingsError, match="'day_counts' must be 'years' or 'days'"):
        DayCounts.from_config({"day_counts": "months"})
    with pytest.raises(SettingsError, match="lacks the setting 'day_counts_years'"):
        DayCounts.from_config({"day_counts": "days"})
    with pytest.raises(SettingsError, match="'day_counts_years' must list years, got '20x9'"):
        DayCounts.from_config({"day_counts": "days", "day_counts_years": "20x9"}).years()
    with pytest.raises(SettingsError, match="lacks the setting 'analysis_seed'"):
        AnalysisAsk.from_config({"personalise_pull": 0.01, "personalise_epochs": 1})
    with pytest.raises(SettingsError, match=r"'importance_repeats' must be int, got 2\.5"):
        AnalysisAsk.from_config(
            {"analysis_seed": 0, "personalise_pull": 0.01, "importance_repeats": 2.5}
        )
    with pytest.raises(SettingsError, match="'start_metrics' must be bool, got 1"):
        StartMetrics.from_config({"start_metrics": 1})


@pytest.mark.parametrize("model", ["lr-sgd", "svm"])
def test_fine_tuning_sets_a_models_own_passes_and_nothing_else(model):
    spec = model_spec(model)
    options = {**defaults(), **build_strategy(model).model_config}
    passes = spec.own_epochs.from_config(options)
    tuned = passes.with_epochs(9)
    assert type(tuned) is type(passes) and tuned != passes
    assert tuned.with_epochs(getattr(passes, OWN_EPOCHS[model])) == passes


def test_a_task_is_read_once_into_its_groups_and_a_malformed_one_refused_before_any_work():
    data, training = DataSettings("next-day", 0.2, 0), LocalTraining(1, 0.02, 64)
    config = {**data.to_config(), **training.to_config(), "model": "lr-sgd", "round": 3}
    groups = TaskGroups.parse(over_the_wire(config))
    assert (groups.data, groups.training, groups.model) == (data, training, ModelTask("lr-sgd"))
    assert groups.number == RoundNumber(3)
    assert groups.svm is None and groups.announcement is None and groups.analysis is None
    # Local DP's noise multiplier is its training noise's and its scoring's: one is sent alone.
    noised = TaskGroups.parse({**config, **DPNoise(1.0, 0.5).to_config()})
    assert noised.dp_noise == DPNoise(1.0, 0.5) and noised.dp_scoring is None
    scored = TaskGroups.parse({**config, **DPScoring(4.0, 0.5).to_config()})
    assert scored.dp_scoring == DPScoring(4.0, 0.5) and scored.dp_noise is None

    class Untouched(LocalWork):
        def statistics(self, groups, parameters=None):
            raise AssertionError("a malformed task reached the province's work")

    work = Untouched(synthesize_province("hubei", 1000, 1))
    for bad, message in [
        ({"round": "3"}, "'round' must be int, got '3'"),
        ({"test_fraction": "0.2"}, "'test_fraction' must be float"),
        ({"compression": "int8"}, "lacks the setting 'topk_fraction'"),
        ({"importance_repeats": 2}, "lacks the setting 'analysis_seed'"),
        ({"dp_bounds": "{}"}, "lacks the setting 'dp_statistics_noise'"),
        ({"he_run": 7}, "'he_run' must be str, got 7"),
    ]:
        task = pb.Task(round=3, kind=pb.TASK_KIND_STATISTICS, config=to_config({**config, **bad}))
        with pytest.raises(SettingsError, match=message):
            perform(work, task, None)


def test_every_settings_group_is_read_on_arrival():
    """A group added to the contract but not to TaskGroups would reach the work unchecked."""

    def subclasses(kind: type) -> set[type]:
        return {sub for child in kind.__subclasses__() for sub in {child, *subclasses(child)}}

    parsed = {kind for hint in get_type_hints(TaskGroups).values() for kind in get_args(hint)}
    assert subclasses(TaskSettings) <= parsed


@pytest.mark.parametrize("model", ["gbdt", "rf-hist"])
def test_a_tree_models_settings_are_read_on_arrival_under_its_prefix(model):
    strategy = build_strategy(model)
    config = over_the_wire(strategy.model_config)
    assert TaskGroups.parse(config).trees == strategy.settings
    prefix = model_spec(model).trees.prefix
    with pytest.raises(SettingsError, match=f"'{prefix}max_depth' must be int, got 6.0"):
        TaskGroups.parse({**config, f"{prefix}max_depth": 6.0})  # once cut to 6 unasked
    assert TaskGroups.parse(over_the_wire(build_strategy("lr-sgd").model_config)).trees is None


def test_the_work_reads_a_group_from_the_parse_as_it_read_it_from_the_map():
    config = {**DataSettings("next-day", 0.2, 0).to_config(), "model": "lr-sgd", "round": 3}
    groups = TaskGroups.parse(config)
    # A required group the task lacks is refused by its first key, as reading the map refused it.
    with pytest.raises(SettingsError, match="lacks the setting 'local_epochs'"):
        groups.need(LocalTraining)
    assert groups.need(FoldSettings) == FoldSettings() == FoldSettings.from_config(config)
    assert groups.need(RoundNumber) == RoundNumber(3)
    tuned = groups.with_group(LocalTraining(9, 0.02, 64))
    assert tuned.training == LocalTraining(9, 0.02, 64) and tuned.data == groups.data
    # Secure aggregation binds an exchange to every setting as sent but the province's seat.
    seated = TaskGroups.parse({**config, **secagg.Seat(4).to_config()})
    assert dict(seated.shared) == config and seated.seat == secagg.Seat(4)


def test_a_tree_question_reuses_the_runs_settings_but_never_a_value_sent_otherwise():
    context = TaskContext(100, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0).to_config()
    config = {**over_the_wire(build_strategy("gbdt").model_config), **context, "round": 1}
    first = TaskGroups.parse({**config, **TreeStep("level", 0).to_config()})
    later = TaskGroups.parse({**config, **TreeStep("level", 7, True).to_config()})
    assert later.tree_step == TreeStep("level", 7, True) and first.tree_step.tree_index == 0
    assert later.trees == first.trees and later.context == first.context
    assert dict(later.shared)["tree_index"] == 7
    assert TaskGroups.parse(config).tree_step is None
    # A value equal to one read before but of another kind is read afresh, and refused.
    assert TaskGroups.parse({**config, "gbdt_max_depth": 1}).trees.max_depth == 1
    with pytest.raises(SettingsError, match="'gbdt_max_depth' must be int, got True"):
        TaskGroups.parse({**config, "gbdt_max_depth": True})
    assert TaskGroups.parse({**config, "gbdt_learning_rate": 1}).trees.learning_rate == 1.0
    with pytest.raises(SettingsError, match="'gbdt_learning_rate' must be float, got True"):
        TaskGroups.parse({**config, "gbdt_learning_rate": True})
    assert np.signbit(TaskGroups.parse({**config, "close_mean": -0.0}).context.close_mean)
    assert not np.signbit(TaskGroups.parse(config).context.close_mean)
