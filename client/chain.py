"""The protection chain: every upload a province makes leaves through the same links, in one order.

A link is middleware, in the manner of Flower's client mods: it is given the task and the rest of
the chain, may change the task's parameters on the way in (decrypt them, take out the shares
relayed with them) and the outcome on the way out (noise, mask, encrypt, compress). Statistics,
training updates, evaluation metrics and analysis answers all pass through it, so a mechanism is
written once and applies to every phase it should. The order of the links is defined in one
place, client/privacy.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from client.groups import TaskGroups
from common.tensors import Arrays

# The phases whose outcomes leave the province.
STATISTICS, TRAIN, EVALUATE, ANALYSE = "statistics", "train", "evaluate", "analyse"
# Threshold HE's decryption of a sum: the HE link answers it with this province's share.
DECRYPT = "decrypt"


@dataclass(frozen=True)
class Task:
    kind: str
    groups: TaskGroups  # its settings, as parsed on arrival
    parameters: Arrays | None


@dataclass(frozen=True)
class Outcome:
    num_examples: int
    metrics: dict[str, float]
    arrays: Arrays = field(default_factory=dict)


Next = Callable[[Task], Outcome]


class Link(Protocol):
    def __call__(self, task: Task, next_: Next) -> Outcome:
        """The outcome of `next_` on `task`, as this mechanism lets it leave."""
        ...


def run(links: Sequence[Link], task: Task, work: Next) -> Outcome:
    """`work` on `task` behind `links`, the first outermost: it sees the task as it arrived and
    has the last word on what leaves."""

    def through(position: int) -> Next:
        if position == len(links):
            return work
        return lambda inner: links[position](inner, through(position + 1))

    return through(0)(task)
