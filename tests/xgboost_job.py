"""XGBoost's and LightGBM's side of `make bench-trees`, run by the benchmark's own Python.

Not part of fedstock and not imported by it: it runs in a separate virtual environment that has
xgboost and lightgbm (the project depends on neither). Each province's rows arrive as an .npz
written by tests/bench_trees.py: unscaled features, tomorrow's change from today's close, and
the test rows. Modes:
  server N PORT                 XGBoost's federated gRPC server for N workers
  worker PORT RANK N DATA OUT   one province: federated training (tree_method=hist), its test SSE
  central DATA_DIR OUT          XGBoost and LightGBM on the union of every province's rows
Settings arrive as JSON in the environment variable TREE_SETTINGS.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def settings() -> dict:
    return json.loads(os.environ["TREE_SETTINGS"])


def xgb_params(s: dict, threads: int) -> dict:
    return {
        "tree_method": "hist",
        "objective": "reg:squarederror",
        "eta": s["learning_rate"],
        "max_depth": s["max_depth"],
        "max_bin": s["max_bins"],
        "lambda": s["reg_lambda"],
        "min_child_weight": s["min_child_weight"],
        "base_score": s["base_score"],
        "nthread": threads,
    }


def test_sse(prediction: np.ndarray, data: dict) -> float:
    price = data["close_test"] + prediction
    return float(np.sum((price - data["y_test"]) ** 2))


def server(n: int, port: int) -> None:
    from xgboost import federated

    federated.run_federated_server(n, port, blocking=True, timeout=3600)


def worker(port: int, rank: int, n: int, path: str, out: str) -> None:
    import xgboost as xgb
    from xgboost import collective

    data = dict(np.load(path))
    s = settings()
    started = time.perf_counter()
    with collective.CommunicatorContext(
        dmlc_communicator="federated",
        federated_server_address=f"127.0.0.1:{port}",
        federated_world_size=n,
        federated_rank=rank,
    ):
        train = xgb.DMatrix(data["x_train"], label=data["change_train"], nthread=1)
        booster = xgb.train(xgb_params(s, 1), train, num_boost_round=s["trees"])
        seconds = time.perf_counter() - started
    prediction = booster.predict(xgb.DMatrix(data["x_test"], nthread=1))
    record = {"seconds": seconds, "sse": test_sse(prediction, data), "rows": len(data["y_test"])}
    Path(out).write_text(json.dumps(record))


def central(folder: str, out: str) -> None:
    import lightgbm
    import xgboost as xgb

    parts = [dict(np.load(p)) for p in sorted(Path(folder).glob("*.npz"))]
    union = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    s = settings()
    records = {}
    started = time.perf_counter()
    train = xgb.DMatrix(union["x_train"], label=union["change_train"], nthread=2)
    booster = xgb.train(xgb_params(s, 2), train, num_boost_round=s["trees"])
    seconds = time.perf_counter() - started
    prediction = booster.predict(xgb.DMatrix(union["x_test"]))
    records["xgboost"] = {"seconds": seconds, "mse": test_sse(prediction, union) / len(prediction)}
    started = time.perf_counter()
    model = lightgbm.LGBMRegressor(
        n_estimators=s["trees"],
        learning_rate=s["learning_rate"],
        max_depth=s["max_depth"],
        num_leaves=2 ** s["max_depth"],
        max_bin=s["max_bins"],
        reg_lambda=s["reg_lambda"],
        min_child_weight=s["min_child_weight"],
        min_child_samples=1,
        n_jobs=2,
        verbose=-1,
    ).fit(union["x_train"], union["change_train"])
    seconds = time.perf_counter() - started
    prediction = model.predict(union["x_test"])
    records["lightgbm"] = {"seconds": seconds, "mse": test_sse(prediction, union) / len(prediction)}
    Path(out).write_text(json.dumps(records))


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "server":
        server(int(rest[0]), int(rest[1]))
    elif mode == "worker":
        worker(int(rest[0]), int(rest[1]), int(rest[2]), rest[3], rest[4])
    else:
        central(rest[0], rest[1])
