"""The federated SVM (random Fourier features, FedAvg) and the exact RBF SVR comparison codec."""

import numpy as np
import pytest
from sklearn.svm import SVR

from client import trainers
from client.groups import TaskGroups
from client.local import LocalWork
from common import preprocess
from common.data import synthesize_province
from common.models import rff, svr
from common.models.checks import UpdateError
from common.provinces import PROVINCES
from common.settings import DataSettings, TaskContext
from server.memory import MemoryChannel
from server.models import build_strategy, defaults
from server.strategy import ClientResult
from tests import in_memory


def test_random_features_approximate_the_rbf_kernel_and_depend_on_the_seed_alone():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3))
    gamma = 0.4
    features = rff.FourierFeatures.draw(3, 40_000, gamma, seed=5)
    z = features.transform(x)
    exact = np.exp(-gamma * ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    np.testing.assert_allclose(z @ z.T, exact, atol=0.02)
    again = rff.FourierFeatures.draw(3, 40_000, gamma, seed=5)
    np.testing.assert_array_equal(again.weights, features.weights)
    assert not np.array_equal(rff.FourierFeatures.draw(3, 10, gamma, 6).offsets, again.offsets[:10])


def test_scale_gamma_is_scikit_learns():
    x = np.random.default_rng(1).normal(loc=[0, 3], scale=[1, 2], size=(500, 2))
    assert rff.scale_gamma(2, x.var()) == pytest.approx(SVR(gamma="scale").fit(x, x[:, 0])._gamma)


def test_the_preconditioner_stays_finite_for_any_symmetric_gram():
    indefinite = np.array([[1.0, 2.0], [2.0, -5.0]])
    assert np.isfinite(rff.preconditioner(indefinite, 1)).all()
    assert np.isfinite(rff.preconditioner(np.zeros((3, 3)), 10)).all()


def provinces(seed=0):
    """Three non-IID provinces of a nonlinear target: each sees its own part of the inputs."""
    rng = np.random.default_rng(seed)
    parts = []
    for centre in (-1.5, 0.0, 1.5):
        x = rng.normal(loc=centre, scale=0.7, size=(1500, 2))
        parts.append((x, np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2))
    return parts


def config(**overrides):
    return {
        **defaults(),
        **DataSettings("paper", 0.2, 0).to_config(),
        "svm_target": "price",
        "svm_features": 200,
        "svm_gamma": 1.0,
        "svm_epochs": 2,
        "svm_learning_rate": 0.5,  # a dozen steps a round here, not thousands as on real data
        **TaskContext(
            train_rows=4500,
            close_mean=0.0,
            close_scale=1.0,
            target_mean=0.0,
            target_std=1.0,
            change_mean=0.0,
            change_std=1.0,
            feature_variance=1.0,
        ).to_config(),
        **overrides,
    }


def test_fedavg_rounds_of_local_training_improve_the_global_model():
    parts = provinces()
    x_all = np.vstack([x for x, _ in parts])
    y_all = np.concatenate([y for _, y in parts])
    strategy = build_strategy("svm", {"svm_features": 200})
    weights, errors = None, []
    for server_round in (1, 2, 3, 4):
        updates = [
            trainers.fit_svm(x, y, weights, TaskGroups.parse(config(round=server_round)))
            for x, y in parts
        ]
        results = [
            ClientResult(str(i), len(y), {}, u)
            for i, ((_, y), u) in enumerate(zip(parts, updates, strict=True))
        ]
        for result in results:
            strategy.check_update(result.arrays, 2)
        weights = strategy.aggregate_fit(server_round, results, [], weights)
        errors.append(
            np.mean((trainers.predict_svm(weights, x_all, TaskGroups.parse(config())) - y_all) ** 2)
        )
    assert errors[-1] < errors[0] < np.var(y_all)
    assert errors[-1] < 0.2 * np.var(y_all)


def test_the_svm_learns_the_change_from_the_close_and_answers_in_yuan():
    x = np.array([[10.0, 1.0], [20.0, 2.0]])  # columns as scaled: close, then anything
    cfg = config(
        svm_target="change",
        close_mean=15.0,
        close_scale=5.0,
        change_mean=0.1,
        change_std=0.5,
    )
    y = np.array([65.6, 115.6])  # closes 65 and 115 (10·5+15, 20·5+15), change 0.6 each
    t = trainers.standardise(y, x, TaskGroups.parse(cfg))
    np.testing.assert_allclose(t, [1.0, 1.0])
    np.testing.assert_allclose(trainers.restore(t, x, TaskGroups.parse(cfg)), y)


def test_targets_kept_for_read_only_rows_are_those_derived_afresh_and_follow_their_inputs():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(50, 2)), rng.normal(loc=3.0, size=50)
    frame = {"svm_target": "change", "close_mean": 1.0, "close_scale": 2.0, "change_std": 0.5}
    groups = TaskGroups.parse(config(**frame, change_mean=0.1))
    trainers.standardise(y, x, groups)  # writeable rows: derived, not kept ...
    x[:, 0] += 1.0  # ... so what is written to them shows at once
    moved = trainers.standardise(y, x, groups)
    np.testing.assert_array_equal(moved, (y - (x[:, 0] * 2.0 + 1.0) - 0.1) / 0.5)
    x.flags.writeable = y.flags.writeable = False
    kept = trainers.standardise(y, x, groups)
    np.testing.assert_array_equal(kept, moved)
    assert trainers.standardise(y, x, groups) is kept and not kept.flags.writeable
    shifted = trainers.standardise(y, x, TaskGroups.parse(config(**frame, change_mean=0.6)))
    np.testing.assert_array_equal(shifted, (y - (x[:, 0] * 2.0 + 1.0) - 0.6) / 0.5)
    t = rng.normal(size=50)
    restored = trainers.restore(t, x, groups)
    np.testing.assert_array_equal(restored, x[:, 0] * 2.0 + 1.0 + 0.1 + t * 0.5)
    assert restored.flags.writeable  # the caller's own array, not a kept one


def test_a_read_only_view_on_rows_that_can_be_written_is_derived_afresh():
    rng = np.random.default_rng(5)
    rows, y = rng.normal(size=(50, 2)), rng.normal(loc=3.0, size=50)
    frame = {"svm_target": "change", "close_mean": 1.0, "close_scale": 2.0, "change_std": 0.5}
    groups = TaskGroups.parse(config(**frame, change_mean=0.1))
    x = rows[:]  # read-only itself, but its memory is written through `rows`
    x.flags.writeable = y.flags.writeable = False
    trainers.standardise(y, x, groups)
    rows[:, 0] += 1.0
    np.testing.assert_array_equal(
        trainers.standardise(y, x, groups), (y - (x[:, 0] * 2.0 + 1.0) - 0.1) / 0.5
    )


def test_an_exact_svr_member_predicts_as_scikit_learn():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4))
    t = np.tanh(x[:, 0]) + rng.normal(scale=0.1, size=300)
    member = svr.fit_svr(x, t, gamma=0.3, subsample=200, rng=np.random.default_rng(0))
    rows = np.random.default_rng(0).choice(300, size=200, replace=False)
    model = SVR(**{**svr.TABLE_1, "gamma": 0.3}).fit(x[rows], t[rows])
    x_new = rng.normal(size=(50, 4))
    np.testing.assert_allclose(svr.decision_function(member, x_new), model.predict(x_new))
    arrays = svr.SVRS.pack([member, member])
    members = svr.SVRS.unpack(arrays, 4)
    np.testing.assert_allclose(svr.predict_mean(members, x_new), model.predict(x_new))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"support_vectors": np.zeros((3, 5))}, "shape"),
        ({"dual_coef": np.zeros(2)}, "shape"),
        ({"gamma": np.asarray(-1.0)}, "positive"),
        ({"intercept": np.asarray([0.0])}, "scalar"),
        ({"dual_coef": np.array([np.nan, 0, 0])}, "NaN"),
    ],
)
def test_malformed_svr_members_are_refused(change, message):
    member = {
        "support_vectors": np.zeros((3, 4)),
        "dual_coef": np.zeros(3),
        "intercept": np.asarray(0.0),
        "gamma": np.asarray(0.5),
    }
    with pytest.raises(UpdateError, match=message):
        svr.SVRS.unpack(svr.SVRS.pack([{**member, **change}]), 4)


def test_svm_updates_must_be_weights_of_the_configured_size():
    strategy = build_strategy("svm", {"svm_features": 10})
    strategy.check_update({"coef": np.zeros(10), "intercept": np.zeros(())}, 8)
    with pytest.raises(UpdateError, match="shape"):
        strategy.check_update({"coef": np.zeros(11), "intercept": np.zeros(())}, 8)


class Receiving(LocalWork):
    """A province's real work, keeping each global model it is sent to score."""

    def __init__(self, raw) -> None:
        super().__init__(raw)
        self.received: list = []

    def evaluate(self, groups, scaler, parameters):
        self.received.append((groups, scaler, parameters))
        return super().evaluate(groups, scaler, parameters)


def test_svm_local_rbf_ships_other_provinces_training_rows_to_every_province(tmp_path):
    """Not private, as its module says: each province's RBF SVR is its support vectors, rows of
    its scaled training data, and the global model every province receives holds them all."""
    works = {p: Receiving(synthesize_province(p, 9_000, 3)) for p in PROVINCES}
    in_memory.run(tmp_path, "--model", "svm-local-rbf", "--rounds", "1", over=MemoryChannel(works))
    groups, scaler, model = works["hubei"].received[-1]
    beijing = preprocess.scale(works["beijing"].split(groups).x_train, *scaler)
    rows = {row.tobytes() for row in beijing}
    members = svr.SVRS.unpack(model, beijing.shape[1])
    shipped = [v for m in members for v in m["support_vectors"] if v.tobytes() in rows]
    assert len(shipped) >= 10  # beijing's training rows, exactly, in hubei's hands
