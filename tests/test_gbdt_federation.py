"""Histogram trees over the federation: the server's run over nine provinces, in memory and over
real gRPC with real processes, equals the same algorithm on the union of their rows."""

import numpy as np
import pytest

from client import trainers
from client.local import LocalWork
from common import preprocess
from common.data import synthesize_province
from common.models import histtree
from common.models.histgrow import FOREST, TreeSettings
from common.models.histparty import fit_union
from common.provinces import PROVINCES
from server.memory import MemoryChannel
from tests import in_memory
from tests.test_federation import ROWS, SEED
from tests.test_federation_models import check_clients_scored
from tests.test_federation_models import run as run_processes

CLOSE = preprocess.NEXT_DAY_FEATURES.index("close")


def union():
    splits = [preprocess.split(synthesize_province(p, ROWS, SEED)) for p in PROVINCES]
    stack = {k: np.concatenate([getattr(s, k) for s in splits]) for k in ("x_train", "y_train")}
    tests = [(s.x_test, s.y_test) for s in splits]
    return stack["x_train"], stack["y_train"], tests


def centralised_mse(settings):
    x, y, tests = union()
    grown = fit_union(x, y - x[:, CLOSE], settings)
    x_test = np.concatenate([t[0] for t in tests])
    y_test = np.concatenate([t[1] for t in tests])
    prediction = x_test[:, CLOSE] + histtree.predict(grown.base_score, grown.trees, x_test)
    return float(np.mean((prediction - y_test) ** 2))


class Recorded(LocalWork):
    """A province that keeps a copy of every training outcome it sends."""

    def __init__(self, raw):
        super().__init__(raw)
        self.sent = []

    def train(self, config, scaler, parameters):
        outcome = super().train(config, scaler, parameters)
        self.sent.append(outcome.arrays)
        return outcome


def test_federated_gbdt_equals_the_same_trees_on_the_union(tmp_path):
    results = in_memory.run(tmp_path, "--model", "gbdt", "--rounds", "1", "--gbdt-trees", "20")
    record = results["rounds"][0]["trees"]
    assert record["count"] == 20
    assert record["exchanges"] >= 20  # one question per tree and level: at least the roots
    expected = centralised_mse(TreeSettings(trees=20))
    assert results["final"]["mse"] == pytest.approx(expected, rel=1e-9)


def test_federated_rf_hist_is_within_one_percent_of_the_centralised_forest(tmp_path):
    flags = ["--model", "rf-hist", "--rounds", "1", "--rfh-trees", "30"]
    results = in_memory.run(tmp_path, *flags)
    assert results["rounds"][0]["trees"]["count"] == 30
    expected = centralised_mse(TreeSettings(**{**FOREST.to_mapping(""), "trees": 30}))
    assert results["final"]["mse"] == pytest.approx(expected, rel=0.01)


def test_no_upload_during_gbdt_training_holds_a_raw_value(tmp_path):
    works = {p: Recorded(synthesize_province(p, ROWS, SEED)) for p in PROVINCES}
    flags = ["--model", "gbdt", "--rounds", "1", "--gbdt-trees", "3", "--gbdt-max-bins", "32"]
    in_memory.run(tmp_path, *flags, over=MemoryChannel(works))
    n_features = len(preprocess.NEXT_DAY_FEATURES)
    for work in works.values():
        data = work.split({"setting": "next-day", "test_fraction": 0.2, "seed": 0})
        raw = np.unique(np.concatenate([data.x_train.ravel(), data.y_train, data.x_test.ravel()]))
        assert work.sent
        for arrays in work.sent:
            # Only sums over the shared bins: shapes set by the bins, never by the rows.
            if set(arrays) == {"sketch"}:
                assert arrays["sketch"].shape == (n_features, histtree.CELLS)
            else:
                assert set(arrays) == {"grad", "hess"}
                assert arrays["grad"].shape[1:] == (n_features, 32)
                assert arrays["hess"].shape == arrays["grad"].shape
            values = np.concatenate([a.ravel() for a in arrays.values()])
            fractional = values[values != np.round(values)]  # counts are whole numbers
            assert not np.isin(fractional, raw).any()
            assert not np.isin(np.float32(fractional), np.float32(raw)).any()


@pytest.mark.integration
def test_gbdt_over_real_grpc_predicts_what_the_provinces_scored(tmp_path):
    flags = ["--gbdt-trees", "15", "--gbdt-max-depth", "4"]
    results = run_processes(tmp_path, "gbdt", 1, *flags)
    settings = TreeSettings(trees=15, max_depth=4)
    assert results["final"]["mse"] == pytest.approx(centralised_mse(settings), rel=1e-9)
    arrays = dict(np.load(tmp_path / "model.npz"))
    config = {"setting": "next-day"}
    check_clients_scored(results, lambda x: trainers.predict_trees(arrays, x, config))
