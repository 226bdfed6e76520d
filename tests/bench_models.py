"""Benchmarks of the random forest and the SVM: `make bench` runs them after linear regression.

On the paper's 2.7M synthetic rows, for each model: the federation's training time (first round
to final metrics) and whole run, peak memory (VmHWM) of the server and of the largest
province's client, tensor bytes per round, and the MSE beside a centralised fit of the same
model. The federated SVM is also set beside an exact RBF SVR fitted on the largest subsample
that trains in the federated SVM's time. Benchmarks measure and print; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.svm import SVR
from sklearn.tree import DecisionTreeRegressor

from client import trainers
from client.groups import TaskGroups
from common import preprocess
from common.data import synthesize_province
from common.launch import LocalFederation
from common.models import forest, svr
from common.provinces import PROVINCES
from common.settings import DataSettings
from server.models import defaults

PAPER_ROWS = 2_699_730
# Table 1's forest of 100 trees limited to depth 16, each province growing only its share of
# the global forest: on 2 cores, 900 trees of depth 16 on these rows take over half an hour.
FOREST_FLAGS = ["--rf-max-depth", "16", "--rf-grow", "share"]
CENTRAL_TREES = 20  # the centralised reference forest: its MSE barely moves past a few tens
# Table 1 unlimited, on a tenth of the rows: large updates, to weigh the server's memory against.
MEMORY_ROWS = 270_000
SVM_ROUNDS = 10
SLOW = ["--round-timeout", "3600", "--poll-seconds", "5"]
MIB = 1 << 20


def size(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB" if nbytes >= MIB else f"{nbytes / 1024:.1f} KiB"


class PeakMemory(threading.Thread):
    """Reads a process's VmHWM (its peak resident memory) until the process ends."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.peak_kib = 0

    def run(self) -> None:
        while True:
            try:
                text = self.status.read_text()
            except OSError:
                return
            peaks = [int(x.split()[1]) for x in text.splitlines() if x.startswith("VmHWM:")]
            if not peaks:  # exited: only its zombie is left
                return
            self.peak_kib = max(self.peak_kib, peaks[0])
            time.sleep(0.2)


@dataclass
class Run:
    results: dict[str, Any]
    wall_seconds: float
    server_peak_mib: float
    client_peak_mib: float

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.results["rounds"]


def federate(model: str, rounds: int, rows: int, seed: int, flags: list[str]) -> Run | None:
    """The federation on this machine, watching the server's and Guangdong's peak memory."""
    with tempfile.TemporaryDirectory() as out:
        federation = LocalFederation(Path(out), model, rounds, rows, seed, server_args=flags)
        started = time.perf_counter()
        federation.start()
        watched = [
            PeakMemory(federation.server.pid),
            PeakMemory(federation.clients["guangdong"].pid),
        ]
        for watch in watched:
            watch.start()
        codes = federation.wait(timeout=7200)
        wall = time.perf_counter() - started
        if set(codes.values()) != {0}:
            print(f"{model}: the federation failed, exit codes {codes}")
            for name in ("server", "guangdong"):
                print((Path(out) / f"{name}.log").read_text()[-2000:])
            return None
        for watch in watched:
            watch.join(timeout=5)
        return Run(federation.results(), wall, *(w.peak_kib / 1024 for w in watched))


def pooled(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The union of the provinces' training and test rows, split as each province splits."""
    splits = [preprocess.split(synthesize_province(p, rows, seed)) for p in PROVINCES]
    return (
        np.vstack([s.x_train for s in splits]),
        np.concatenate([s.y_train for s in splits]),
        np.vstack([s.x_test for s in splits]),
        np.concatenate([s.y_test for s in splits]),
    )


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = work()
    return value, time.perf_counter() - started


def report(title: str, run: Run, central_mse: float, central_seconds: float, note: str) -> None:
    final = run.results["final"]
    print(f"\n{title}")
    print(
        f"  federated: MSE {final['mse']:.5g}, training {final['train_seconds']:.1f} s "
        f"(whole run with start-up and statistics {run.wall_seconds:.1f} s)"
    )
    print(f"  centralised ({note}): MSE {central_mse:.5g}, {central_seconds:.1f} s")
    print(
        f"  peak memory: server {run.server_peak_mib:.0f} MiB, Guangdong's client "
        f"{run.client_peak_mib:.0f} MiB"
    )
    for record in run.records:
        print(
            f"  round {record['round']}: {record['seconds']:.1f} s, MSE {record['mse']:.5g}, "
            f"down {size(record['bytes_down'])}, up {size(record['bytes_up'])}"
        )


def bench_forest(rows: int, seed: int) -> dict[str, Any] | None:
    run = federate("rf", 1, rows, seed, [*SLOW, *FOREST_FLAGS])
    if run is None:
        return None
    x, y, x_test, y_test = pooled(rows, seed)
    # The same model on the union of the rows: the change from today's close, depth 16.
    trees, seconds = timed(
        lambda: forest.fit_forest(x, y - x[:, 0], n_estimators=CENTRAL_TREES, max_depth=16)
    )
    central_mse = float(
        np.mean((x_test[:, 0] + forest.predict_forest(trees, x_test) - y_test) ** 2)
    )
    report(
        f"random forest, {rows:,} rows, 9 client processes, Table 1 with {' '.join(FOREST_FLAGS)}",
        run,
        central_mse,
        seconds,
        f"{CENTRAL_TREES} trees, one process",
    )
    return {
        "federated": run.results["final"]["mse"],
        "centralised": central_mse,
        "server_peak_mib": run.server_peak_mib,
        "client_peak_mib": run.client_peak_mib,
        "train_seconds": run.results["final"]["train_seconds"],
        "rounds": run.records,
    }


def bench_forest_memory(seed: int) -> dict[str, Any] | None:
    """Full-depth trees: does the server hold much less than the provinces send?"""
    run = federate("rf", 1, MEMORY_ROWS, seed, SLOW)
    if run is None:
        return None
    (record,) = run.records
    kept, sent = record["bytes_down"] / 9, record["bytes_up"]
    print(
        f"\nrandom forest, {MEMORY_ROWS:,} rows, Table 1 unlimited (full depth), 100 trees each:"
        f"\n  the provinces sent {size(sent)}; the server kept {size(kept)} "
        f"({sum(record['members'].values())} trees) and peaked at {run.server_peak_mib:.0f} MiB"
        f"\n  training {run.results['final']['train_seconds']:.1f} s, "
        f"Guangdong's client peaked at {run.client_peak_mib:.0f} MiB"
    )
    return {
        "sent_mib": sent / MIB,
        "kept_mib": kept / MIB,
        "server_peak_mib": run.server_peak_mib,
        "client_peak_mib": run.client_peak_mib,
        "train_seconds": run.results["final"]["train_seconds"],
    }


def bench_full_depth_tree(rows: int, seed: int) -> dict[str, Any]:
    """What one of Table 1's trees costs at full depth on all training rows, as the README says:
    scikit-learn's pickle of it against the arrays the federation sends."""
    x, y, _, _ = pooled(rows, seed)
    rng = np.random.default_rng(seed)
    sample = rng.integers(0, len(x), size=len(x))  # a bootstrap draw, as Table 1's forest does
    tree = DecisionTreeRegressor(criterion="squared_error", min_samples_split=2)
    _, seconds = timed(lambda: tree.fit(x[sample], y[sample] - x[sample, 0]))
    pickled = len(pickle.dumps(tree, protocol=pickle.HIGHEST_PROTOCOL))
    wire = sum(a.nbytes for a in forest.tree_arrays(tree).values())
    print(
        f"\none full-depth tree (Table 1, bootstrap) on {len(x):,} training rows: "
        f"{tree.tree_.node_count:,} nodes, depth {tree.get_depth()}, fitted in {seconds:.1f} s"
        f"\n  scikit-learn's pickle {size(pickled)}; on the wire {size(wire)}"
    )
    return {
        "rows": len(x),
        "nodes": int(tree.tree_.node_count),
        "depth": int(tree.get_depth()),
        "fit_seconds": seconds,
        "pickled_mib": pickled / MIB,
        "wire_mib": wire / MIB,
    }


def exact_svr_in(budget: float, x: np.ndarray, t: np.ndarray, x_test: np.ndarray) -> list[dict]:
    """Exact RBF SVRs on doubling subsamples while one trains within `budget` seconds."""
    rng = np.random.default_rng(0)
    fits, n = [], 5_000
    while n <= len(x):
        rows = rng.choice(len(x), size=n, replace=False)
        model = SVR(**{**svr.TABLE_1, "gamma": 1.0 / (x.shape[1] * x.var())})
        _, seconds = timed(lambda: model.fit(x[rows], t[rows]))  # noqa: B023 - called at once
        if seconds > budget:
            break
        fits.append({"rows": n, "seconds": seconds, "prediction": model.predict(x_test)})
        n *= 2
    return fits


def bench_svm(rows: int, seed: int) -> dict[str, Any] | None:
    run = federate("svm", SVM_ROUNDS, rows, seed, SLOW)
    if run is None:
        return None
    x, y, x_test, y_test = pooled(rows, seed)
    stats = run.results["statistics"]
    mean, std = np.array(stats["mean"][:-1]), np.array(stats["std"][:-1])
    x, x_test = (x - mean) / std, (x_test - mean) / std
    config = {
        **defaults(),
        **run.results["task_context"],
        **DataSettings("next-day", 0.2, 0).to_config(),
    }

    def central() -> Any:
        weights = None
        for server_round in range(1, SVM_ROUNDS + 1):
            weights = trainers.fit_svm(
                x, y, weights, TaskGroups.parse({**config, "round": server_round})
            )
        return weights

    weights, seconds = timed(central)
    central_mse = float(
        np.mean((trainers.predict_svm(weights, x_test, TaskGroups.parse(config)) - y_test) ** 2)
    )
    report(
        f"SVM (random Fourier features, FedAvg), {rows:,} rows, 9 client processes, "
        f"{SVM_ROUNDS} rounds",
        run,
        central_mse,
        seconds,
        "the same model, the union of the rows as one province",
    )
    budget = run.results["final"]["train_seconds"]
    fits = exact_svr_in(budget, x, trainers.standardise(y, x, TaskGroups.parse(config)), x_test)
    for fit in fits:
        mse = float(
            np.mean(
                (trainers.restore(fit.pop("prediction"), x_test, TaskGroups.parse(config)) - y_test)
                ** 2
            )
        )
        fit["mse"] = mse
        print(f"  exact RBF SVR on {fit['rows']:,} rows: {fit['seconds']:.1f} s, MSE {mse:.5g}")
    federated = run.results["final"]["mse"]
    if fits:
        print(
            f"  the federated SVM's MSE is {federated / fits[-1]['mse']:.3f} times that of the "
            f"exact SVR on the largest subsample that trains within its {budget:.0f} s"
        )
    return {
        "federated": federated,
        "centralised": central_mse,
        "exact_svr": fits,
        "server_peak_mib": run.server_peak_mib,
        "client_peak_mib": run.client_peak_mib,
        "train_seconds": budget,
        "rounds": run.records,
    }


PARTS: dict[str, Callable[[int, int], dict[str, Any] | None]] = {
    "forest": bench_forest,
    "forest_memory": lambda rows, seed: bench_forest_memory(seed),
    "full_depth_tree": bench_full_depth_tree,
    "svm": bench_svm,
}


def run_all(rows: int, seed: int, parts: list[str], out: Path | None = None) -> None:
    figures = {"rows": rows, **{part: PARTS[part](rows, seed) for part in parts}}
    if figures.get("svm") and figures.get("forest_memory"):
        print(
            f"\nfor scale: the SVM's server, whose updates are 4 KiB, peaked at "
            f"{figures['svm']['server_peak_mib']:.0f} MiB: Python, gRPC and numpy alone"
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "models.json").write_text(json.dumps(figures, indent=2, default=float))
        print(f"\nfigures written to {out / 'models.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--rows", type=int, default=PAPER_ROWS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    run_all(args.rows, args.seed, args.only, args.out)


if __name__ == "__main__":
    main()
