"""Every settings group a task carries, parsed once on its arrival (client/tasks.py) and
handed to everything below: the work, the trainers, the protection links and the analysis
read their settings from this one object, never from the task's config map."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TypeVar, get_args, get_type_hints

from common.analysis import AnalysisAsk
from common.model_settings import (
    ForestSettings,
    LocalTraining,
    MemberSeed,
    ModelTask,
    Shuffle,
    StartMetrics,
    SvmSettings,
)
from common.models.histgrow import TreeSettings, TreeStep
from common.protection import (
    Compression,
    DPNoise,
    DPScoring,
    DPStatistics,
    HESession,
    Protection,
)
from common.registry import MODELS
from common.secagg import Announcement, Exchange, Seat, Unmasking
from common.settings import (
    DataSettings,
    DayCounts,
    FoldSettings,
    RoundNumber,
    TaskContext,
    TaskSettings,
)
from common.wire import ConfigScalar

Group = TypeVar("Group", bound=TaskSettings)
# The settings the server sends each province differently (its seat in secure aggregation).
PER_CLIENT = frozenset(f.name for f in fields(Seat))
STEP_KEYS = frozenset(f.name for f in fields(TreeStep))
# The groups parsed lately, by their settings as sent: one a province's run, one a province
# in a federation in one process (the in-memory channel), a few for a grid search.
_PARSED: dict[tuple[tuple[str, str], ...], TaskGroups] = {}
KEEP_PARSED = 32


@dataclass(frozen=True)
class TaskGroups:
    """Every settings group a task carries, read once on its arrival; a group it does not
    carry is None. A group sent in part or with a value of the wrong kind is refused here, by
    its key, before any work: the province reports the task failed and takes the next one.
    A tree model's settings are keyed by its prefix (`gbdt_`, `rfh_`), not by field name.
    `shared` holds every setting as sent but the province's own seat: what secure
    aggregation's exchanges bind their masks to, so they cancel only if every member was
    asked the same (client/secagg.py); nothing reads a setting from it."""

    number: RoundNumber | None
    dates: DayCounts | None
    data: DataSettings | None
    fold: FoldSettings | None
    context: TaskContext | None
    model: ModelTask | None
    training: LocalTraining | None
    shuffle: Shuffle | None
    start_metrics: StartMetrics | None
    member: MemberSeed | None
    forest: ForestSettings | None
    svm: SvmSettings | None
    tree_step: TreeStep | None
    protection: Protection | None
    dp_noise: DPNoise | None
    dp_scoring: DPScoring | None
    dp_statistics: DPStatistics | None
    he: HESession | None
    compression: Compression | None
    announcement: Announcement | None
    seat: Seat | None
    unmasking: Unmasking | None
    exchange: Exchange | None
    analysis: AnalysisAsk | None
    trees: TreeSettings | None
    shared: tuple[tuple[str, ConfigScalar], ...] = ()

    @classmethod
    def parse(cls, config: Mapping[str, ConfigScalar]) -> TaskGroups:
        """The groups in `config`; SettingsError naming the first key that is not as it must be.

        A run's tree questions differ only in their step (`TreeStep`), so every other group is
        read once for settings sent exactly alike, kind of each value included, and reused:
        at 800 questions a run that was a tenth of a province's CPU an answer (docs/trees.md)."""
        step = TreeStep.sent(config)
        rest = {k: v for k, v in config.items() if k not in STEP_KEYS}
        # repr tells every kind a setting may have apart (1, 1.0, True, '1'; -0.0 from 0.0).
        key = tuple(sorted((k, repr(v)) for k, v in rest.items()))
        known = _PARSED.get(key)
        if known is None:
            known = _parse(rest)
            while len(_PARSED) >= KEEP_PARSED:
                _PARSED.pop(next(iter(_PARSED)))
            _PARSED[key] = known
        shared = tuple(sorted((k, v) for k, v in config.items() if k not in PER_CLIENT))
        return replace(known, tree_step=step, shared=shared)

    def need(self, kind: type[Group]) -> Group:
        """The task's group of `kind`; a group it does not carry is refused by its first
        required setting, as a config without it would be, or is its defaults if it has none."""
        carried = getattr(self, _field_of(kind))
        return carried if carried is not None else kind.from_config({})

    def with_group(self, group: TaskSettings) -> TaskGroups:
        """These groups with `group` in place of the one of its kind: the analysis's own
        fine-tuning and members train as a task with those settings would."""
        return replace(self, **{_field_of(type(group)): group})


def _parse(config: Mapping[str, ConfigScalar]) -> TaskGroups:
    """Every group in `config` but the tree step, read from its values."""
    carried = {
        name: group.from_config(config) if own & config.keys() else None
        for name, (group, own) in _groups().items()
        if group is not TreeStep
    }
    return TaskGroups(**carried, tree_step=None, trees=_trees(carried["model"], config))


@functools.cache
def _held() -> dict[str, type]:
    """Each settings field of TaskGroups and the group it holds (its annotation without None)."""
    hints = get_type_hints(TaskGroups)
    return {
        f.name: next(kind for kind in get_args(hints[f.name]) if kind is not type(None))
        for f in fields(TaskGroups)
        if f.name != "shared"
    }


@functools.cache
def _field_of(kind: type) -> str:
    return next(name for name, held in _held().items() if held is kind)


@functools.cache
def _groups() -> dict[str, tuple[type[TaskSettings], set[str]]]:
    """Each field of TaskGroups, the group it holds and the keys only that group has: a group
    is carried when one of them is (local DP's noise multiplier belongs to its training noise
    and to its scoring alike). The trees' settings, keyed by a prefix, are read by `_trees`."""
    groups = {name: group for name, group in _held().items() if group is not TreeSettings}
    keys = Counter(f.name for group in groups.values() for f in fields(group))
    return {
        name: (group, {f.name for f in fields(group) if keys[f.name] == 1})
        for name, group in groups.items()
    }


def _trees(model: ModelTask | None, config: Mapping[str, ConfigScalar]) -> TreeSettings | None:
    """A histogram-tree model's settings, under its prefix; None for any other model (one the
    registry does not know is refused by the work that needs it, with the models there are)."""
    spec = MODELS.get(model.model) if model else None
    if spec is None or spec.trees is None:
        return None
    return TreeSettings.from_mapping(config, spec.trees.prefix)
