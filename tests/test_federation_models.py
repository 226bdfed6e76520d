"""Random forest and SVM over a real server and nine real client processes, with grid search."""

import numpy as np
import pytest

from client import trainers
from client.groups import TaskGroups
from common.launch import LocalFederation
from common.models import forest
from common.provinces import PROVINCES
from common.settings import DataSettings
from server.models import defaults
from tests.test_federation import FAST, ROWS, SEED, federation_splits

pytestmark = pytest.mark.integration
# The data settings the federation ran with, as a task config carries them.
NEXT_DAY = DataSettings("next-day", 0.2, 0).to_config()


def run(tmp_path, model, rounds, *flags):
    federation = LocalFederation(tmp_path, model, rounds, ROWS, SEED, server_args=[*FAST, *flags])
    federation.start()
    codes = federation.wait(timeout=300)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    return federation.results()


def splits():
    return federation_splits(PROVINCES)


def check_selection(results, candidates):
    selection = results["model_selection"]
    assert [c["params"] for c in selection["candidates"]] == candidates
    assert all(len(c["fold_mse"]) == 2 for c in selection["candidates"])
    assert selection["best"]["cv_mse"] == min(c["cv_mse"] for c in selection["candidates"])
    return selection["best"]["params"]


def check_clients_scored(results, predict):
    """The saved global model, decoded here, predicts what every province scored."""
    for province, data in splits().items():
        mse = np.mean((predict(data.x_test) - data.y_test) ** 2)
        assert mse == pytest.approx(results["final"]["per_client"][province]["mse"], rel=1e-9)


def test_a_global_forest_of_every_provinces_trees(tmp_path):
    flags = ["--rf-n-estimators", "10", "--rf-global-trees", "30", "--rf-max-depth", "6"]
    results = run(
        tmp_path, "rf", 1, *flags, "--grid", "rf-min-samples-leaf=1,50", "--cv-folds", "2"
    )
    best = check_selection(results, [{"rf_min_samples_leaf": 1}, {"rf_min_samples_leaf": 50}])
    (record,) = results["rounds"]
    train_samples = results["statistics"]["train_samples"]
    shares = forest.shares(30, [train_samples[p] for p in sorted(train_samples)])
    assert record["members"] == dict(zip(sorted(train_samples), shares, strict=True))
    trees = forest.forest_from_arrays(dict(np.load(tmp_path / "model.npz")), 8)
    assert len(trees) == sum(shares) == 30
    kept_bytes = sum(a.nbytes for tree in trees for a in tree.values())
    assert record["bytes_down"] == 9 * kept_bytes  # the global forest, to every evaluator
    assert record["bytes_up"] > 2 * kept_bytes  # ten trees from each, of which about three kept
    config = {**defaults(), **NEXT_DAY}
    arrays = forest.forest_to_arrays(trees)
    check_clients_scored(
        results, lambda x: trainers.predict_forest(arrays, x, TaskGroups.parse(config))
    )
    # Beside a centralised forest of the same settings on the union of the training rows.
    data = splits().values()
    x = np.vstack([d.x_train for d in data])
    y = np.concatenate([d.y_train for d in data])
    central = forest.fit_forest(
        x,
        y - x[:, 0],
        n_estimators=30,
        max_depth=6,
        random_state=0,
        min_samples_leaf=best["rf_min_samples_leaf"],
    )
    x_test = np.vstack([d.x_test for d in data])
    y_test = np.concatenate([d.y_test for d in data])
    central_mse = np.mean((x_test[:, 0] + forest.predict_forest(central, x_test) - y_test) ** 2)
    assert results["final"]["mse"] < 1.25 * central_mse


def test_fedavg_of_a_random_feature_svm(tmp_path):
    results = run(
        tmp_path, "svm", 3, "--svm-epochs", "3", "--grid", "svm-c=0.5,2", "--cv-folds", "2"
    )
    best = check_selection(results, [{"svm_c": 0.5}, {"svm_c": 2.0}])
    for record in results["rounds"]:
        assert record["bytes_up"] == 9 * 501 * 8  # weights only: no row, no Gram leaves
        assert np.isfinite(record["mse"]) and record["failures"] == []
    weights = dict(np.load(tmp_path / "model.npz"))
    assert weights["coef"].shape == (500,)
    config = {**defaults(), **best, **results["task_context"], **NEXT_DAY}
    stats = results["statistics"]
    mean, std = np.array(stats["mean"][:-1]), np.array(stats["std"][:-1])

    def predict(x):
        return trainers.predict_svm(weights, (x - mean) / std, TaskGroups.parse(config))

    check_clients_scored(results, predict)
    # Beside the same model fitted centrally: the union of the rows as one province, 3 rounds.
    data = splits().values()
    x = (np.vstack([d.x_train for d in data]) - mean) / std
    y = np.concatenate([d.y_train for d in data])
    central = None
    for server_round in (1, 2, 3):
        central = trainers.fit_svm(
            x, y, central, TaskGroups.parse({**config, "svm_epochs": 3, "round": server_round})
        )
    x_test = (np.vstack([d.x_test for d in data]) - mean) / std
    y_test = np.concatenate([d.y_test for d in data])
    central_mse = np.mean(
        (trainers.predict_svm(central, x_test, TaskGroups.parse(config)) - y_test) ** 2
    )
    assert results["final"]["mse"] < 1.1 * central_mse
