"""Federated k-fold cross-validation and grid search, driven by the server.

For each candidate setting and each fold j, the federation trains from scratch on every
client's training rows outside its fold j (each client cuts its own rows: common/crossval.py)
and scores the model on every client's fold j, through the same rounds as any training. In the
next-day setting fold j is the same block of days in every province, its training days kept
an embargo away; in the paper setting, random rows. A
candidate's cross-validated MSE is the MSE over all held-out rows of all folds. The best
candidate then trains the final model on all training rows, scored on the test rows as usual.
Scaling uses the statistics of all training rows in every fold: only means and variances.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.hyperparameters import ALL_OPTIONS
from common.settings import FoldSettings
from common.wire import ConfigScalar
from server.disclosure import by_rounds
from server.rounds import FederationError, RoundLoop
from server.strategy import Strategy

log = logging.getLogger("fedstock.server")

Grid = dict[str, list[ConfigScalar]]


def parse_grid(items: Sequence[str]) -> Grid:
    """`NAME=V1,V2,…` items (NAME a hyperparameter, as its flag without dashes) to a grid."""
    grid: Grid = {}
    for item in items:
        name, _, values = item.partition("=")
        option = ALL_OPTIONS.get(name.strip().lstrip("-").replace("-", "_"))
        if option is None or not values:
            raise ValueError(
                f"grid item {item!r} is not NAME=V1,V2,… with NAME one of: "
                f"{', '.join(o.flag.removeprefix('--') for o in ALL_OPTIONS.values())}"
            )
        try:
            grid[option.name] = [option.parse(v.strip()) for v in values.split(",")]
        except ValueError as error:
            raise ValueError(f"grid item {item!r}: {error}") from None
    return grid


@dataclass(frozen=True)
class ModelSelection:
    build: Callable[[Mapping[str, ConfigScalar]], Strategy]  # a strategy for hyperparameters
    base: Mapping[str, ConfigScalar]  # the hyperparameters the flags set
    grid: Grid
    folds: int
    embargo: int = 0  # days between a fold's training and validation days (by time)

    def candidates(self) -> list[dict[str, ConfigScalar]]:
        return [
            dict(zip(self.grid, values, strict=True))
            for values in itertools.product(*self.grid.values())
        ]

    def choose(self, loop: RoundLoop) -> Strategy:
        """Cross-validate every candidate, record them, and return the best one's strategy.

        A resumed run keeps the choice its results already hold.
        """
        done = loop.results.data.get("model_selection") or {}
        if done.get("best"):
            return self.build({**self.base, **done["best"]["params"]})
        started = time.perf_counter()
        report: dict[str, Any] = {"folds": self.folds, "grid": self.grid, "candidates": []}
        if loop.split_config:  # next-day: folds are blocks of days, an embargo apart
            report.update(kind="time", embargo_days=self.embargo)
        else:
            report.update(kind="random")
        for number, params in enumerate(self.candidates(), start=1):
            scores = [self._fold(loop, params, fold) for fold in range(self.folds)]
            rows = sum(n for _, n, _ in scores)
            # Every fold must have produced a model for the candidate to count.
            counted = all(n for _, n, _ in scores)
            cv_mse = sum(mse * n for mse, n, _ in scores) / rows if counted else None
            report["candidates"].append(
                {
                    "params": params,
                    "cv_mse": cv_mse,
                    "fold_mse": [mse for mse, _, _ in scores],
                    # What each fold's rounds let out, as the final training's rounds say it.
                    "disclosure": [said for _, _, said in scores],
                }
            )
            log.info(
                "model selection %d/%d %s: cross-validated MSE %s",
                number,
                len(self.candidates()),
                params or "(the flags' setting)",
                "n/a" if cv_mse is None else f"{cv_mse:.6g}",
            )
            loop.results.update(model_selection=report)
        scored = [c for c in report["candidates"] if c["cv_mse"] is not None]
        if not scored:
            raise FederationError("cross-validation produced no evaluated model")
        best = min(scored, key=lambda c: c["cv_mse"])
        report.update(best=best, seconds=time.perf_counter() - started)
        loop.results.update(model_selection=report)
        log.info("model selection chose %s (MSE %.6g)", best["params"], best["cv_mse"])
        return self.build({**self.base, **best["params"]})

    def _fold(
        self, loop: RoundLoop, params: dict[str, ConfigScalar], fold: int
    ) -> tuple[float | None, int, list[dict[str, Any]]]:
        """The fold's MSE over its held-out rows and their count ((None, 0) without a model),
        and its rounds' disclosure entries, identical consecutive ones grouped."""
        strategy = self.build({**self.base, **params})
        settings = FoldSettings(self.folds, fold, self.embargo)
        records: list[dict[str, Any]] = []
        evaluation = loop.fit(strategy, settings.to_config(), records)
        said = by_rounds(records)
        if evaluation is None:
            return None, 0, said
        rows = sum(int(s["n_test"]) for s in evaluation.per_client.values())
        return evaluation.mse, rows, said
