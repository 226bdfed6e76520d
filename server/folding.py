"""Updates folded into a running sum as each is accepted, so no round holds every update.

A mean-like aggregate (FedAvg's weighted mean, the mean step a server optimiser moves by) needs
only Σ wᵢ·(xᵢ − r) and Σ wᵢ. Folding each accepted update into that sum at once lets its bytes
go as soon as it is counted. The sum is kept as two vectors, the rounded sum and the rounding
error of every addition (Neumaier's compensated summation, each error found exactly by
TwoSum), so the result is the exactly rounded sum up to about 2⁻¹⁰⁰ of its size: the order in
which the updates arrive does not change its bits, as the province-ordered sums of the held
path never did either.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from common.tensors import Arrays
from common.vectors import flatten, unflatten

if TYPE_CHECKING:
    from server.strategy import ClientResult

# Elements added at a time: the temporaries of one addition stay this small, however large
# the update.
BLOCK = 1 << 16


class CompensatedSum:
    """A float64 vector sum whose rounding errors are carried beside it, not lost. One add at a
    time (they share the temporaries): `Folding` holds its lock around each."""

    def __init__(self, size: int) -> None:
        # None once `result` has let them go.
        self.high: np.ndarray | None = np.zeros(size)
        self.low: np.ndarray | None = np.zeros(size)
        # Every addition's temporaries, allocated once: fresh ones for each block cost more
        # than the arithmetic (the allocator maps and faults in their pages every time).
        self._part, self._total, self._back, self._error = np.empty((4, BLOCK))

    def add(
        self, values: np.ndarray, weight: float, offset: int = 0, minus: np.ndarray | None = None
    ) -> None:
        """Add `weight`·(`values` − `minus`) into the elements from `offset` on."""
        for start in range(0, len(values), BLOCK):
            count = min(BLOCK, len(values) - start)
            at = slice(offset + start, offset + start + count)
            part, total = self._part[:count], self._total[:count]
            back, error = self._back[:count], self._error[:count]
            high = self.high[at]
            part[:] = values[start : start + count]
            if minus is not None:
                np.subtract(part, minus[at], out=part)
            np.multiply(part, weight, out=part)
            # TwoSum: total + error == high + part exactly.
            np.add(high, part, out=total)
            np.subtract(total, high, out=back)
            np.subtract(total, back, out=error)
            np.subtract(high, error, out=error)
            np.subtract(part, back, out=part)
            np.add(error, part, out=error)
            self.low[at] += error
            high[:] = total

    def result(self) -> np.ndarray:
        """The sum, rounded once, made in place of the rounded sum's own vector: no copy of
        the update's size, and the sum is used up (its vectors are let go)."""
        total, low = self.high, self.low
        if total is None:
            raise ValueError("this sum was rounded once already and its vectors are let go")
        total += low
        self.high = self.low = None
        return total


@dataclass
class Fold:
    """One round's updates as a weighted sum of their steps from `reference` (zero: none)."""

    server_round: int
    like: Arrays  # names and shapes of the update, as arrays of no memory of their own
    reference: np.ndarray | None
    total: CompensatedSum
    weight: float = 0.0
    provinces: list[str] = field(default_factory=list)  # a province may count twice (async)

    @classmethod
    def start(cls, server_round: int, like: Arrays, reference: Arrays | None) -> Fold:
        flat = None if reference is None else flatten(reference)
        size = sum(int(np.size(like[name])) for name in like)
        shapes = {name: np.broadcast_to(0.0, np.shape(like[name])) for name in like}
        return cls(server_round, shapes, flat, CompensatedSum(size))

    def add(self, province: str, arrays: Arrays, weight: float) -> None:
        """Fold one update in, array by array in the flattened order, block by block."""
        offset = 0
        for name in sorted(self.like):
            values = np.ravel(arrays[name])
            self.total.add(values, weight, offset, self.reference)
            offset += len(values)
        self.weight += weight
        self.provinces.append(province)

    def mean_step(self) -> np.ndarray:
        """Σ wᵢ·(xᵢ − r) / Σ wᵢ, divided in place of the sum: a fold is averaged once."""
        if self.weight <= 0:
            raise ValueError("cannot average updates that report no training samples")
        step = self.total.result()
        step /= self.weight
        return step

    def applied(self, step: np.ndarray) -> Arrays:
        """`step` (this fold's, or a server optimiser's move from it, used up) added onto the
        reference in place and shaped as the updates were."""
        if self.reference is not None:
            step += self.reference
        return unflatten(step, self.like)

    def mean(self) -> Arrays:
        """The weighted mean of the updates themselves, shaped as they were."""
        return self.applied(self.mean_step())


class Folding:
    """The fold a strategy keeps for the round it is in, started afresh each round."""

    def __init__(self) -> None:
        self._fold: Fold | None = None
        self._lock = threading.Lock()

    def add(
        self,
        server_round: int,
        province: str,
        arrays: Arrays,
        weight: float,
        reference: Arrays | None,
    ) -> None:
        with self._lock:
            if self._fold is None or self._fold.server_round != server_round:
                self._fold = Fold.start(server_round, arrays, reference)
            self._fold.add(province, arrays, weight)

    def take(self, server_round: int, results: Sequence[ClientResult]) -> Fold | None:
        """The round's fold of exactly `results`' updates, or None where they were kept
        whole. Any mix of the two is a bug, refused rather than averaged."""
        with self._lock:
            fold, self._fold = self._fold, None
        provinces = sorted(r.province for r in results)
        if fold is not None and fold.server_round == server_round:
            if sorted(fold.provinces) != provinces or any(r.arrays for r in results):
                raise RuntimeError(
                    f"round {server_round}'s fold holds {sorted(fold.provinces)}, "
                    f"the results are {provinces}"
                )
            return fold
        if not all(r.arrays for r in results):
            raise RuntimeError(f"round {server_round}'s updates were folded into no sum")
        return None
