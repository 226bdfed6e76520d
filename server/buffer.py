"""FedBuff's aggregation without a network: steps from the versions they started from,
weighted down by staleness, applied to the newest version every K updates.

After Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation" (2022). A
client's update becomes its step Δ = w_client − w_start from the global version it started
from; its staleness s is the number of versions published since. Once K updates are in, the
newest version moves by Σ n_i·(1+s_i)^−a·Δ_i / Σ n_i: with fresh updates that is FedAvg's
sample-weighted mean, and a stale update both counts less and shortens the step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from common.models.checks import UpdateError
from common.tensors import Arrays
from common.vectors import flatten, unflatten
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
        self._step: np.ndarray | None = None
        self._examples = 0
        self._like: Arrays = {}
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

    def fold(self, started_from: int, result: ClientResult) -> Contribution:
        """Add the update's weighted step to the buffer and let its starting version go.

        Its staleness is counted now, against the version it is applied to; the maximum was
        checked on arrival, when the client could still be told.
        """
        staleness = self.version - started_from
        start = self._versions[started_from]
        reference = start if start is not None else self.parameters
        update = flatten(result.arrays)
        step = update if reference is None else update - flatten(reference)
        weight = staleness_weight(staleness, self.exponent)
        weighted = weight * result.num_examples * step
        self._step = weighted if self._step is None else self._step + weighted
        self._examples += result.num_examples
        self._like = result.arrays
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

    def publish(self) -> list[Contribution]:
        """Apply the buffer to the newest version as the next one; what went into it."""
        if self._step is None:
            raise ValueError("nothing to publish: the buffer is empty")
        current = self.parameters
        base = np.zeros_like(self._step) if current is None else flatten(current)
        parameters = unflatten(base + self._step / self._examples, self._like)
        published = self.contributions
        if not self._references[self.version]:
            del self._versions[self.version]
        self.version += 1
        self._versions[self.version] = parameters
        self._step, self._examples, self.contributions = None, 0, []
        return published
