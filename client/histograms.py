"""A province's answers to histogram-tree questions, from one party kept across the questions.

The party (common/models/histparty.py) holds this province's binned rows, predictions and
gradients between the phases of a round, so each question costs one pass over the rows. It
learns tomorrow's change from today's close, comparable across every province's price level.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Callable

import numpy as np

from client.groups import TaskGroups
from common.model_settings import ModelTask
from common.models import histtree
from common.models.checks import UpdateError
from common.models.histgrow import Query, TreeSettings, TreeStep, compact
from common.models.histparty import Party, fit_union
from common.protection import Protection
from common.registry import model_spec
from common.tensors import Arrays

# Parties by rows and settings. A province's run needs one; a grid search a few more; a
# federation in one process (the in-memory channel) one per province.
_PARTIES: dict[tuple[bytes, TreeSettings], Party] = {}
KEEP = 16
# Each rows array's digest while the array lives, by its id.
_DIGESTS: dict[int, tuple[weakref.ref, bytes]] = {}


def settings_for(groups: TaskGroups) -> TreeSettings:
    """The tree settings parsed on arrival; ValueError for a model not grown from histograms."""
    model = groups.need(ModelTask).model
    if model_spec(model).trees is None or groups.trees is None:
        raise ValueError(f"model {model!r} is not grown from histograms")
    return groups.trees


def warm_up(groups: TaskGroups) -> None:
    """In a run of histogram trees, load their compiled kernels in the background while the
    phases before the round go, so the first question need not wait for them."""
    if groups.trees is not None:
        histtree.warm_up()


def answer(
    x: np.ndarray, change: Callable[[], np.ndarray], question: Arrays | None, groups: TaskGroups
) -> Arrays:
    """This province's answer to the question in the task; `change` makes the target the
    trees learn, wanted only when the party for these rows is made, not at every question."""
    settings = settings_for(groups)
    told = groups.need(TreeStep)
    query = Query.from_wire(told, dp_clip(groups), question or {}, x.shape[1], settings.max_bins)
    key = (_digest(x), settings)
    if key not in _PARTIES:
        while len(_PARTIES) >= KEEP:
            _PARTIES.pop(next(iter(_PARTIES)))
        _PARTIES[key] = Party(x, change(), settings)
    answer = _PARTIES[key].answer(query)
    # In the clear only the nonzero entries travel; masks and noise need every entry.
    in_clear = groups.need(Protection).privacy in (None, "none")
    return compact(answer) if in_clear else answer


def dp_clip(groups: TaskGroups) -> float:
    """The bound on each row's gradient under local DP, or 0 without it."""
    if groups.need(Protection).privacy != "dp-local":
        return 0.0
    clip = groups.dp_noise.dp_clip if groups.dp_noise is not None else 0.0
    if not 0 < clip < math.inf:
        raise UpdateError("local DP on histograms needs a positive, finite 'dp_clip'")
    return clip


def _digest(x: np.ndarray) -> bytes:
    """The rows' SHA-1, worked out once per array: a province's rows are the same array from
    question to question, and hashing them each time cost a third of its answer."""
    known = _DIGESTS.get(id(x))
    if known is None or known[0]() is not x:
        known = _DIGESTS[id(x)] = (weakref.ref(x), hashlib.sha1(np.ascontiguousarray(x)).digest())
        weakref.finalize(x, _DIGESTS.pop, id(x), None)
    return known[1]


def predict(arrays: Arrays, x: np.ndarray) -> np.ndarray:
    """The ensemble's predicted change, the model checked before use."""
    base, trees = histtree.unpack_model(arrays, x.shape[1])
    return histtree.predict(base, trees, x)


def personalise(model: Arrays, x: np.ndarray, change: np.ndarray, groups: TaskGroups) -> Arrays:
    """The global ensemble plus one this province grows, with the run's settings, on what the
    global one leaves unexplained of its own rows: boosting continued locally."""
    base, trees = histtree.unpack_model(model, x.shape[1])
    own = fit_union(x, change - histtree.predict(base, trees, x), settings_for(groups))
    return histtree.pack_model(base + own.base_score, [*trees, *own.trees])
