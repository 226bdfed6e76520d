"""The whole federation over localhost: a real server process and nine real client processes."""

import math

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from baselines.data import DataOptions, prepare
from common import preprocess
from common.data import synthesize_province
from common.launch import LocalFederation
from common.provinces import PROVINCES
from server.summary import format_summary

pytestmark = pytest.mark.integration

ROWS, SEED = 20_000, 3
# Short polls; deadlines only a broken run reaches (phases close when every client answers), so
# nine processes starting on a loaded machine never miss them.
FAST = ["--poll-seconds", "2", "--round-timeout", "600", "--join-timeout", "900"]


def run(tmp_path, model, rounds=2):
    federation = LocalFederation(tmp_path, model, rounds, ROWS, SEED, server_args=FAST)
    federation.start()
    codes = federation.wait(timeout=240)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    return federation.results()


def federation_splits(provinces, setting="next-day"):
    """Each province's split as the federation makes it: at the cutoff agreed on their union."""
    frames = {p: synthesize_province(p, ROWS, SEED) for p in provinces}
    return prepare(frames, DataOptions(setting=setting)).splits


def centralised_fit(setting="next-day", provinces=PROVINCES):
    """scikit-learn on the union of the provinces' training rows, globally scaled."""
    splits = federation_splits(provinces, setting).values()
    x = np.vstack([s.x_train for s in splits])
    y = np.concatenate([s.y_train for s in splits])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    return LinearRegression().fit((x - mean) / scale, y)


def test_fedavg_lr_over_nine_client_processes(tmp_path):
    results = run(tmp_path, "lr")
    assert results["model"] == "lr"
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert record["clients"] == sorted(PROVINCES)
        assert math.isfinite(record["mse"]) and record["failures"] == []
        assert set(record["per_client"]) == set(PROVINCES)
    final = results["final"]
    assert final["clients"] == 9 and final["train_seconds"] > 0
    total = sum(s["n_test"] for s in final["per_client"].values())
    weighted = sum(s["mse"] * s["n_test"] for s in final["per_client"].values()) / total
    assert final["mse"] == pytest.approx(weighted)
    # the naive forecasts, scored by each province on its own test rows, pooled as the MSE is
    splits = federation_splits(PROVINCES).values()
    y = np.concatenate([s.y_test for s in splits])
    close = np.concatenate([s.reference_test["last_close"] for s in splits])
    assert final["last_close_mse"] == pytest.approx(np.mean((close - y) ** 2))
    assert final["naive_mse"] == min(final["persistence_mse"], final["last_close_mse"])
    assert final["skill"] == pytest.approx(1 - final["mse"] / final["naive_mse"])
    assert all("skill" in score for score in final["per_client"].values())
    summary = format_summary(results)
    assert "naive MSE" in summary
    assert "Pearson correlation with the target" in summary
    assert all(province in summary for province in PROVINCES) and "overall" in summary
    stats = results["statistics"]
    assert stats["columns"] == [*preprocess.NEXT_DAY_FEATURES, "target"]
    assert np.allclose(np.diag(stats["pearson"]), 1.0)


def test_exact_lr_equals_the_centralised_fit(tmp_path):
    results = run(tmp_path, "lr-exact", rounds=1)
    model = np.load(tmp_path / results["final"]["model_file"])
    central = centralised_fit()
    np.testing.assert_allclose(model["coef"], central.coef_, rtol=1e-6)
    np.testing.assert_allclose(model["intercept"], central.intercept_, rtol=1e-6)
