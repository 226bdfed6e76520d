"""What a task asks of a province's work: one dispatch for every way a task reaches it.

The daemon calls it for tasks that came over gRPC, the server's in-memory channel for tasks
handed over in the same process, so both do exactly the same work for the same task.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import get_args, get_type_hints

import numpy as np

from client.local import LocalWork, Outcome
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
    SettingsError,
    TaskContext,
    TaskSettings,
)
from common.tensors import Arrays, from_tensor
from common.wire import ConfigScalar, from_config
from proto.fedstock.v1 import federation_pb2 as pb

log = logging.getLogger("fedstock.client")

SECAGG_STEPS = {
    pb.TASK_KIND_SECAGG_KEYS: "keys",
    pb.TASK_KIND_SECAGG_SHARES: "shares",
    pb.TASK_KIND_SECAGG_UNMASK: "unmask",
}


class ClientError(RuntimeError):
    """The client cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class TaskGroups:
    """Every settings group a task carries, read once on its arrival; a group it does not
    carry is None. A group sent in part or with a value of the wrong kind is refused here, by
    its key, before any work: the province reports the task failed and takes the next one.
    A tree model's settings are keyed by its prefix (`gbdt_`, `rfh_`), not by field name."""

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

    @classmethod
    def parse(cls, config: Mapping[str, ConfigScalar]) -> TaskGroups:
        """The groups in `config`; SettingsError naming the first key that is not as it must be."""
        carried = {
            name: group.from_config(config) if own & config.keys() else None
            for name, (group, own) in _groups().items()
        }
        return cls(**carried, trees=_trees(carried["model"], config))


@functools.cache
def _groups() -> dict[str, tuple[type[TaskSettings], set[str]]]:
    """Each field of TaskGroups, the group it holds (its annotation without the None) and the
    keys only that group has: a group is carried when one of them is (local DP's noise
    multiplier belongs to its training noise and to its scoring alike). The trees' settings,
    keyed by a prefix, are read by `_trees`."""
    hints = get_type_hints(TaskGroups)
    held = {f.name: _group(hints[f.name]) for f in fields(TaskGroups)}
    groups = {name: group for name, group in held.items() if group is not TreeSettings}
    keys = Counter(f.name for group in groups.values() for f in fields(group))
    return {
        name: (group, {f.name for f in fields(group) if keys[f.name] == 1})
        for name, group in groups.items()
    }


def perform(work: LocalWork, task: pb.Task, parameters: Arrays | None) -> Outcome:
    """Do `task` on the province's rows; ClientError for a task this client cannot do."""
    config = from_config(task.config)
    groups = TaskGroups.parse(config)
    kind = pb.TaskKind.Name(task.kind)
    log.info("round %d: %s", task.round, kind.removeprefix("TASK_KIND_").lower())
    if task.kind == pb.TASK_KIND_STATISTICS:
        return work.statistics(config, parameters)
    if task.kind == pb.TASK_KIND_HE_DECRYPT:
        return work.decrypt(config, parameters)
    if task.kind in SECAGG_STEPS:
        return work.secagg(SECAGG_STEPS[task.kind], config, parameters)
    if groups.data is None:
        raise SettingsError("the task's config lacks the setting 'setting'")
    scaler = _scaler(task, groups.data.columns())
    if task.kind == pb.TASK_KIND_TRAIN:
        return work.train(config, scaler, parameters)
    if task.kind == pb.TASK_KIND_EVALUATE and parameters is not None:
        return work.evaluate(config, scaler, parameters)
    if task.kind == pb.TASK_KIND_ANALYSE and parameters is not None:
        return work.analyse(config, scaler, parameters)
    raise ClientError(f"the server sent a task this client does not understand: {kind}")


def _group(hint: object) -> type:
    return next(kind for kind in get_args(hint) if kind is not type(None))


def _trees(model: ModelTask | None, config: Mapping[str, ConfigScalar]) -> TreeSettings | None:
    """A histogram-tree model's settings, under its prefix; None for any other model (one the
    registry does not know is refused by the work that needs it, with the models there are)."""
    spec = MODELS.get(model.model) if model else None
    if spec is None or spec.trees is None:
        return None
    return TreeSettings.from_mapping(config, spec.trees.prefix)


def _scaler(task: pb.Task, expected: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if list(task.scaler.features) != expected:
        raise ClientError(
            f"the server scales features {list(task.scaler.features)}, this client has {expected}"
        )
    return from_tensor(task.scaler.mean), from_tensor(task.scaler.scale)
