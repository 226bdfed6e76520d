"""FedBuff's buffer without a network: updates taken as steps from the versions they started
from, weighted down by staleness, and handed to the strategy every K updates.

After Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation" (2022). A
client's update becomes its step Δ = w_client − w_start from the global version it started
from; its staleness s is the number of versions published since. The buffer rebases it onto
the newest version w as w + (1+s)^−a·Δ, so the strategy combines updates that all start from
w, as in a synchronous round: FedAvg's sample-weighted mean of them moves w by
Σ n_i·(1+s_i)^−a·Δ_i / Σ n_i (fresh updates: FedAvg itself; a stale one both counts less and
shortens the step), a robust rule or a server optimiser treats the weighted steps as its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from common.models.checks import UpdateError
from common.tensors import Arrays
from common.vectors import flatten, unflatten
from server.channel import Keep, as_it_is
from server.strategy import ClientResult


class StaleUpdate(UpdateError):
    """An update that started from a version too old to be applied (`--max-staleness`)."""


def staleness_weight(staleness: int, exponent: float) -> float:
    """(1 + s)^−a: a fresh update counts fully, one s versions late by less."""
    if staleness < 0:
        raise ValueError(f"staleness cannot be negative, got {staleness}")
    return float((1.0 + staleness) ** -exponent)


@dataclass(frozen=True)
class Contribution:
    """One update as it entered a version: who, from which version, and how much it counted."""

    province: str
    started_from: int
    staleness: int
    weight: float
    num_examples: int
    digest: str


# Combines updates that all start from the newest version (None: no model yet) into the next.
Aggregate = Callable[[list[ClientResult], Arrays | None], Arrays | None]


class VersionBuffer:
    """The newest global version, the older ones tasks still start from, and the open buffer.

    Version 0 is "no model yet": an update that started from it is a whole model, taken as a
    step from the version it is applied to (from zero before the first is published).
    """

    def __init__(
        self,
        version: int,
        parameters: Arrays | None,
        size: int,
        exponent: float,
        max_staleness: int = 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"the buffer needs at least one update per version, got {size}")
        if exponent < 0 or max_staleness < 0:
            raise ValueError("the staleness exponent and the maximum staleness cannot be negative")
        self.size, self.exponent, self.max_staleness = size, exponent, max_staleness
        self.version = version
        self._versions: dict[int, Arrays | None] = {version: parameters}
        self._references: Counter[int] = Counter()
        self._rebased: list[ClientResult] = []
        self.contributions: list[Contribution] = []

    @property
    def parameters(self) -> Arrays | None:
        return self._versions[self.version]

    @property
    def kept(self) -> list[int]:
        """The versions held: the newest, and those a task in flight started from."""
        return sorted(self._versions)

    @property
    def ready(self) -> bool:
        return len(self.contributions) >= self.size

    def start(self) -> tuple[int, Arrays | None]:
        """The version a new task starts from (the newest), kept until the task ends."""
        self._references[self.version] += 1
        return self.version, self.parameters

    def release(self, started_from: int) -> None:
        """A task ended without an update to fold in: its version may be let go."""
        self._references[started_from] -= 1
        if self._references[started_from] <= 0:
            del self._references[started_from]
            if started_from != self.version:
                self._versions.pop(started_from, None)

    def check(self, started_from: int) -> int:
        """The staleness of an update from `started_from`; StaleUpdate beyond the maximum."""
        staleness = self.version - started_from
        if self.max_staleness and staleness > self.max_staleness:
            raise StaleUpdate(
                f"it started from version {started_from}, {staleness} versions behind the "
                f"newest ({self.version}); this server applies none more than "
                f"{self.max_staleness} behind"
            )
        return staleness

    def fold(self, started_from: int, result: ClientResult, keep: Keep = as_it_is) -> Contribution:
        """Rebase the update onto the newest version, keep of it what `keep` keeps (the
        strategy may fold it into its running sum), and let its start version go.

        Its staleness is counted now, against the version it is applied to; the maximum was
        checked on arrival, when the client could still be told.
        """
        staleness = self.version - started_from
        start, current = self._versions[started_from], self.parameters
        reference = start if start is not None else current
        update = flatten(result.arrays)
        step = update if reference is None else update - flatten(reference)
        weight = staleness_weight(staleness, self.exponent)
        base = np.zeros_like(step) if current is None else flatten(current)
        rebased = replace(result, arrays=unflatten(base + weight * step, result.arrays))
        self._rebased.append(keep(rebased))
        self.release(started_from)
        contribution = Contribution(
            result.province,
            started_from,
            staleness,
            weight,
            result.num_examples,
            result.digest,
        )
        self.contributions.append(contribution)
        return contribution

    def publish(self, aggregate: Aggregate) -> list[Contribution]:
        """The next version, as `aggregate` combines the buffer; what went into it."""
        if not self._rebased:
            raise ValueError("nothing to publish: the buffer is empty")
        parameters = aggregate(self._rebased, self.parameters)
        if parameters is None:
            raise ValueError("the strategy made no version of the buffer's updates")
        published = self.contributions
        if not self._references[self.version]:
            del self._versions[self.version]
        self.version += 1
        self._versions[self.version] = parameters
        self._rebased, self.contributions = [], []
        return published
