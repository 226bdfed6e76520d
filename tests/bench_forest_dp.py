"""`python -m tests.bench_forest_dp`: what a forest of local trees costs under dp-local.

The server's own run over the in-memory channel (one process), one round of `rf` in the clear
(Table 1's grown trees with leaves of one row, then of at least 20) and under dp-local (trees
whose shapes are drawn, leaves' counts and sums noised) at a few count floors and noise
multipliers. Each run's global forest is scored on every province's test rows
without noise (the MSE a dp-local run reports is the provinces' noised MSEs), beside the naive
forecast and the spent ε. Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from client.local import LocalWork
from common.data import synthesize_province
from common.data.synthetic import DEFAULT_SEED
from common.provinces import PROVINCES
from server.memory import MemoryChannel
from tests import in_memory


class Kept(LocalWork):
    """A province's real work, keeping its last evaluation task to score it again in the clear."""

    def evaluate(self, groups, scaler, parameters):
        self.asked = (groups, scaler, parameters)
        return super().evaluate(groups, scaler, parameters)


def cases(clip: float) -> dict[str, list[str]]:
    dp = ["--privacy", "dp-local", "--dp-clip", str(clip)]
    return {
        "clear, leaves >= 1 (Table 1)": [],
        "clear, leaves >= 20": ["--rf-min-samples-leaf", "20"],
        **{
            f"dp-local, drawn, count floor {m}, sigma {s}": [
                "--rf-min-samples-leaf",
                str(m),
                *dp,
                "--dp-noise-multiplier",
                str(s),
            ]
            for s in (1, 4)
            for m in (20, 50, 200)
        },
    }


def clean_scores(works: dict[str, Kept], raws) -> dict[str, float]:
    """The pooled MSEs (the model's and the naive forecasts') of the last evaluation's model."""
    total: dict[str, float] = {}
    rows = 0
    for province, work in works.items():
        groups, scaler, parameters = work.asked
        # scored as in the clear: no privacy mode, no clipped score
        clean = replace(groups, protection=None, dp_scoring=None, dp_noise=None)
        scored = LocalWork(raws[province]).evaluate(clean, scaler, parameters)
        rows += scored.num_examples
        for key, value in scored.metrics.items():
            if key.endswith("mse"):
                total[key] = total.get(key, 0.0) + value * scored.num_examples
    return {"test_rows": rows, **{k: v / rows for k, v in total.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=270_000, help="rows of the market")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--trees", type=int, default=10, help="trees each province grows")
    parser.add_argument("--clip", type=float, default=0.25, help="--dp-clip, in yuan")
    args = parser.parse_args()
    base = ["--model", "rf", "--rounds", "1", "--rf-n-estimators", str(args.trees)]
    base += ["--rf-global-trees", str(args.trees * len(PROVINCES))]
    with tempfile.TemporaryDirectory() as folder:
        for number, (name, flags) in enumerate(cases(args.clip).items()):
            raws = {
                p: synthesize_province(p, args.rows // len(PROVINCES), args.seed) for p in PROVINCES
            }
            works = {p: Kept(raw) for p, raw in raws.items()}
            out = Path(folder) / str(number)
            results = in_memory.run(out, *base, *flags, over=MemoryChannel(works))
            spent = results["rounds"][-1].get("privacy", {})
            figures = {
                "case": name,
                **clean_scores(works, raws),
                "reported_mse": results["final"]["mse"],
                "epsilon": spent.get("epsilon"),
            }
            print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
