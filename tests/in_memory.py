"""A whole federation in this process: `python -m server`'s run over the in-memory channel.

The server side is the real one (flags, strategy, loop, results, ledger, checkpoint); the nine
provinces are their LocalWork, called directly with every task (server/memory.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from client.local import LocalWork
from client.privacy import ClientPrivacy
from common import forecast
from common.data import synthesize_province
from common.provinces import PROVINCES
from server.__main__ import begin, federate, results_file
from server.cli import parse_args
from server.memory import MemoryChannel, Seconds, one_second

ROWS, SEED = 20_000, 3


def provinces(rows: int = ROWS, seed: int = SEED) -> dict[str, LocalWork]:
    return {p: LocalWork(synthesize_province(p, rows, seed)) for p in PROVINCES}


class Scoring(LocalWork):
    """A province's real work, keeping every evaluation outcome as it leaves the province."""

    def __init__(self, raw, privacy: ClientPrivacy | None = None) -> None:
        super().__init__(raw, privacy)
        self.sent: list = []

    def evaluate(self, groups, scaler, parameters):
        outcome = super().evaluate(groups, scaler, parameters)
        self.sent.append(outcome)
        return outcome


def scores_hidden(results: dict[str, Any], plain: dict[str, Any], hidden: str) -> None:
    """`results` hold the federation's scores, the same as the `plain` run's, and no province's:
    each province's row says why it is `hidden`, and no training MSE reached the server."""
    final, clear = results["final"], plain["final"]
    for name in (*forecast.MEANS, "naive_mse", "skill"):
        assert np.isclose(final[name], clear[name], rtol=1e-6), name
    for province, row in final["per_client"].items():
        assert row == {"n_test": clear["per_client"][province]["n_test"], "hidden": hidden}
    for record in results["rounds"]:
        assert record["train_mse"] is None
        assert all("mse" not in row for row in record["per_client"].values())


def channel(seconds: Seconds = one_second, rows: int = ROWS) -> MemoryChannel:
    return MemoryChannel(provinces(rows), seconds)


def run(out: Path, *flags: str, over: MemoryChannel | None = None) -> dict[str, Any]:
    """Run the server's flags over `over` (nine fresh provinces by default); the results."""
    config = parse_args(["--insecure", "--results", str(out / "results.json"), *flags])
    start = begin(config)  # first, as `python -m server` does: a refused resume writes nothing
    federate(config, over or channel(), results_file(config), start)
    return json.loads((out / "results.json").read_text())
