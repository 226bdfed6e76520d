"""What a task asks of a province's work: one dispatch for every way a task reaches it.

The daemon calls it for tasks that came over gRPC, the server's in-memory channel for tasks
handed over in the same process, so both do exactly the same work for the same task.
"""

from __future__ import annotations

import logging

import numpy as np

from client.groups import TaskGroups
from client.local import LocalWork, Outcome
from common.settings import DataSettings
from common.tensors import Arrays, from_tensor
from common.wire import from_config
from proto.fedstock.v1 import federation_pb2 as pb

log = logging.getLogger("fedstock.client")

SECAGG_STEPS = {
    pb.TASK_KIND_SECAGG_KEYS: "keys",
    pb.TASK_KIND_SECAGG_SHARES: "shares",
    pb.TASK_KIND_SECAGG_UNMASK: "unmask",
}


class ClientError(RuntimeError):
    """The client cannot go on; the message says why and what to do."""


def perform(work: LocalWork, task: pb.Task, parameters: Arrays | None) -> Outcome:
    """Do `task` on the province's rows; ClientError for a task this client cannot do."""
    groups = TaskGroups.parse(from_config(task.config))
    kind = pb.TaskKind.Name(task.kind)
    log.info("round %d: %s", task.round, kind.removeprefix("TASK_KIND_").lower())
    if task.kind == pb.TASK_KIND_STATISTICS:
        return work.statistics(groups, parameters)
    if task.kind == pb.TASK_KIND_HE_DECRYPT:
        return work.decrypt(groups, parameters)
    if task.kind in SECAGG_STEPS:
        return work.secagg(SECAGG_STEPS[task.kind], groups, parameters)
    scaler = _scaler(task, groups.need(DataSettings).columns())
    if task.kind == pb.TASK_KIND_TRAIN:
        return work.train(groups, scaler, parameters)
    if task.kind == pb.TASK_KIND_EVALUATE and parameters is not None:
        return work.evaluate(groups, scaler, parameters)
    if task.kind == pb.TASK_KIND_ANALYSE and parameters is not None:
        return work.analyse(groups, scaler, parameters)
    raise ClientError(f"the server sent a task this client does not understand: {kind}")


def _scaler(task: pb.Task, expected: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if list(task.scaler.features) != expected:
        raise ClientError(
            f"the server scales features {list(task.scaler.features)}, this client has {expected}"
        )
    return from_tensor(task.scaler.mean), from_tensor(task.scaler.scale)
