"""Federated evaluation: one MSE over every test row of every province, and each province's.

The federation's server and the baselines score the same way, so their figures compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from common import forecast


class Scored(Protocol):
    """A province's answer to an evaluation: its test rows and its metrics, "mse" among them."""

    @property
    def province(self) -> str: ...

    @property
    def num_examples(self) -> int: ...

    @property
    def metrics(self) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class Evaluation:
    """The sample-weighted MSE over every test row, and each province's MSE and test rows, with
    its naive baselines and skill beside them."""

    mse: float
    per_client: dict[str, dict[str, Any]]
    # The federation's means, where no province's own are known (secure aggregation).
    totals: dict[str, float] | None = None

    def pooled(self) -> dict[str, Any]:
        """The federation's means over every test row, and what they imply."""
        if self.totals is not None:
            return {**self.totals, **forecast.derived(self.totals)}
        return forecast.pooled(self.per_client)

    @classmethod
    def aggregated(
        cls, sums: Mapping[str, np.ndarray], test_rows: Mapping[str, int], hidden: str
    ) -> Evaluation | None:
        """From the provinces' summed scores (common/forecast.py): the federation's means, and
        for each province its test rows and, instead of its scores, why they are `hidden`."""
        means, total = forecast.from_sums(sums)
        if total == 0 or "mse" not in means:
            return None
        per_client = {p: {"n_test": n, "hidden": hidden} for p, n in sorted(test_rows.items())}
        return cls(means["mse"], per_client, means)

    @classmethod
    def weighted(cls, results: Iterable[Scored]) -> Evaluation | None:
        return cls.from_scores((r.province, r.metrics, r.num_examples) for r in results)

    @classmethod
    def from_scores(
        cls, scores: Iterable[tuple[str, Mapping[str, float], int]]
    ) -> Evaluation | None:
        """From (province, test metrics, test rows); None when there are no test rows at all.

        Each province's record keeps its MSE and, where it scored them, the naive forecasts'
        and the skill they imply (common/forecast.py)."""
        given = list(scores)
        total = sum(n for _, _, n in given)
        if total == 0:
            return None
        mse = sum(metrics["mse"] * n for _, metrics, n in given) / total
        per_client = {
            p: forecast.province(metrics, n) for p, metrics, n in sorted(given, key=_province)
        }
        return cls(float(mse), per_client)


def _province(score: tuple[str, Mapping[str, float], int]) -> str:
    return score[0]
