"""Cross-validation folds, the grid, and the server's choice of the best candidate."""

import numpy as np
import pytest

from common.crossval import fold_labels, fold_split
from common.preprocess import Split
from server.__main__ import parse_args
from server.model_selection import ModelSelection, parse_grid
from server.models import build_strategy
from server.results import ResultsFile
from server.strategy import Evaluation


def test_folds_partition_the_training_rows_evenly_and_reproducibly():
    labels = fold_labels(23, 5, seed=1)
    assert sorted(np.bincount(labels)) == [4, 4, 5, 5, 5]
    np.testing.assert_array_equal(labels, fold_labels(23, 5, seed=1))
    x = np.arange(46.0).reshape(23, 2)
    data = Split(["a", "b"], x, x[:, 0], np.zeros((1, 2)), np.zeros(1))
    held_out = [fold_split(data, 5, fold, seed=1) for fold in range(5)]
    assert sorted(np.concatenate([f.y_test for f in held_out]).tolist()) == x[:, 0].tolist()
    for fold in held_out:
        assert len(fold.y_train) + len(fold.y_test) == 23
        assert not set(fold.y_train) & set(fold.y_test)
    with pytest.raises(ValueError, match="folds"):
        fold_split(data, 1, 0, seed=1)
    with pytest.raises(ValueError, match="does not exist"):
        fold_split(data, 5, 5, seed=1)


def test_grid_items_are_parsed_like_their_flags():
    grid = parse_grid(["svm-c=0.1,1", "--rf-max-depth=4,8", "svm_gamma=scale,0.5"])
    assert grid == {"svm_c": [0.1, 1.0], "rf_max_depth": [4, 8], "svm_gamma": ["scale", 0.5]}
    for bad in (["svm-c"], ["svm-c="], ["nope=1"], ["svm-c=-1"], ["rf-max-depth=deep"]):
        with pytest.raises(ValueError, match="grid item"):
            parse_grid(bad)


def test_server_flags_for_models_and_model_selection(monkeypatch):
    model = parse_args(
        ["--model", "rf", "--rf-max-depth", "12", "--grid", "rf-min-samples-leaf=1,5"]
    ).model
    assert model.options["rf_max_depth"] == 12 and model.options["rf_n_estimators"] == 100
    assert model.cv_folds == 5 and model.grid == {"rf_min_samples_leaf": [1, 5]}
    monkeypatch.setenv("FEDSTOCK_SVM_C", "2.5")
    monkeypatch.setenv("FEDSTOCK_GRID", "svm-epsilon=0.05,0.2")
    model = parse_args(["--model", "svm"]).model
    assert model.options["svm_c"] == 2.5 and model.grid == {"svm_epsilon": [0.05, 0.2]}
    for argv in (["--cv-folds", "1"], ["--rf-max-features", "1.5"], ["--svm-gamma", "wide"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


class FakeLoop:
    """Scores a candidate by a fixed table, as if the federation had trained and evaluated it."""

    def __init__(self, tmp_path, scores):
        self.results = ResultsFile(tmp_path / "results.json", {"model": "svm"})
        self.scores = scores
        self.fits = []
        self.split_config = {}  # the paper setting's random folds

    def fit(self, strategy, config, records):
        self.fits.append((strategy.model_config["svm_c"], config["cv_fold"]))
        mse = self.scores[strategy.model_config["svm_c"]] + config["cv_fold"]
        return Evaluation(mse, {"hubei": {"mse": mse, "n_test": 10 + config["cv_fold"]}})


def test_the_best_cross_validated_candidate_trains_the_final_model(tmp_path):
    loop = FakeLoop(tmp_path, {0.5: 3.0, 2.0: 1.0})
    selection = ModelSelection(
        lambda params: build_strategy("svm", params), {"svm_epsilon": 0.2}, {"svm_c": [0.5, 2.0]}, 2
    )
    chosen = selection.choose(loop)
    assert chosen.model_config["svm_c"] == 2.0 and chosen.model_config["svm_epsilon"] == 0.2
    assert loop.fits == [(0.5, 0), (0.5, 1), (2.0, 0), (2.0, 1)]
    report = loop.results.data["model_selection"]
    assert report["best"]["params"] == {"svm_c": 2.0}
    # Pooled over the held-out rows: (1.0·10 + 2.0·11) / 21.
    assert report["best"]["cv_mse"] == pytest.approx(32 / 21)
    assert [c["fold_mse"] for c in report["candidates"]] == [[3.0, 4.0], [1.0, 2.0]]
    resumed = FakeLoop(tmp_path, {})
    resumed.results.update(model_selection=report)
    assert selection.choose(resumed).model_config["svm_c"] == 2.0 and resumed.fits == []
