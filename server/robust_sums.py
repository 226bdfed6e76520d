"""Robust lr-exact (--robust-sums): a province whose sums no real rows of this market explain is
left out of the sum, before it moves the model.

Summed normal equations are exact, so nothing averages a lie away: one province's XᵀX = 10⁶·I
outweighs every honest row. Each province's own least-squares solution is compared with the
solution of everybody else's sums (leave-one-out), in the metric of its own rows: the excess
mean squared error the others' model would have on its data. Honest provinces of one market
differ by little; a province whose excess is more than FACTOR times the median of the others
is dropped, the worst first, as long as three provinces remain. This is a heuristic, not a
proof: a liar whose sums look like another market's rows, or a majority of liars, is not
caught, and a truly unusual honest province can be dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.models import linear
from server.strategy import CARRIES_STATE, ClientResult, ExactLinear, Strategy

FACTOR = 10.0


def excess(result: ClientResult, others: list[ClientResult]) -> float:
    """Mean squared error the others' joint solution adds on `result`'s rows over its own."""
    xtx, xty = result.arrays["xtx"], result.arrays["xty"]
    own = np.linalg.lstsq(xtx, xty, rcond=None)[0]
    rest = linear.solve_normal_equations(
        sum(r.arrays["xtx"] for r in others), sum(r.arrays["xty"] for r in others)
    )
    gap = own - np.append(rest["coef"], rest["intercept"])
    return float(gap @ xtx @ gap) / result.num_examples


def inconsistent(results: list[ClientResult]) -> list[str]:
    """The provinces to leave out, worst first."""
    kept, dropped = list(results), []
    while len(kept) > 3:
        scores = {r.province: excess(r, [o for o in kept if o is not r]) for r in kept}
        worst = max(scores, key=scores.__getitem__)
        rest = [s for p, s in scores.items() if p != worst]
        if scores[worst] <= FACTOR * float(np.median(rest)):
            break
        dropped.append(worst)
        kept = [r for r in kept if r.province != worst]
    return dropped


class RobustExactLinear(ExactLinear):
    """Exact least squares over the provinces whose sums are consistent with the others'."""

    def __init__(self, model_config) -> None:
        super().__init__(model_config)
        self._dropped: dict[int, list[str]] = {}

    def aggregate_fit(self, server_round, results, failures, current):
        dropped = inconsistent(results)
        self._dropped[server_round] = dropped
        return super().aggregate_fit(
            server_round, [r for r in results if r.province not in dropped], failures, current
        )

    def round_report(self, server_round: int) -> dict[str, Any]:
        return {"inconsistent": self._dropped.get(server_round, [])}

    def replay_refusal(self) -> str | None:
        return CARRIES_STATE  # the provinces it drops are its record of each round


def robust_sums(strategy: Strategy) -> Strategy:
    """`strategy`, a model of summed normal equations (the configuration refuses --robust-sums
    for any other), with inconsistent provinces left out."""
    return RobustExactLinear(strategy.model_config)
