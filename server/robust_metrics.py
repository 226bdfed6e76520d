"""Robust weighting of the round's test MSE (--robust-metrics, opt-in): a province's claimed test
rows cannot make its MSE the federation's.

The round's MSE weighs each province by the test rows it reports, and the server can check
those only against the rows the province declared at Join: a liar that declared 10⁹ rows and
reports an MSE of 0 on 10⁹ test rows sets the round's MSE to nearly 0. Here each province
weighs at most as much as the median province (the lower median, so with two provinces both
weigh the smaller count). A liar then moves the MSE by at most the share of one median
province, however many rows it claims; it can still report any MSE within the checks' bounds.
The price: an honest province with more test rows than the median is counted as the median,
so the figure is no longer the MSE over every test row; each province's own MSE and test
rows are recorded as before.
"""

from __future__ import annotations

from dataclasses import replace

from common.scores import Evaluation


def median_cap(counts: list[int]) -> int:
    """The most test rows one province may weigh: the lower median of everybody's."""
    return sorted(counts)[(len(counts) - 1) // 2]


def capped(evaluation: Evaluation) -> Evaluation:
    """`evaluation` with its MSE weighted by test rows capped at the median province's."""
    records = list(evaluation.per_client.values())
    cap = median_cap([int(r["n_test"]) for r in records])
    weights = [min(int(r["n_test"]), cap) for r in records]
    mse = sum(w * float(r["mse"]) for w, r in zip(weights, records, strict=True)) / sum(weights)
    return replace(evaluation, mse=mse)
