"""The math of the strategies beyond FedAvg, and of local gradient training, without a network."""

import numpy as np
import pytest

from client import trainers
from client.groups import TaskGroups
from client.local import LocalWork
from client.optim import LinearSGD, LocalPlan, local_steps
from client.steps import sgd
from common import preprocess
from common.compression import SCALE, VALUES
from common.data import synthesize_province
from common.model_settings import StartMetrics
from common.models import linear
from common.models.checks import UpdateError
from common.preprocess import GlobalStatistics
from common.scaffold import CONTROL, CONTROL_DELTA
from common.settings import TaskContext
from server import strategies
from server.config import ConfigError, StrategySettings
from server.models import build_strategy
from server.strategies.compressed import Compressed
from server.strategies.federated import FedAdam, FedAvgM, Federated, FedNova, QFedAvg, Scaffold
from server.strategy import ClientResult, Failure, FedAvg

SGD = {"model": "lr-sgd", "local_epochs": 1, "learning_rate": 0.1, "batch_size": 8}


def base() -> FedAvg:
    return FedAvg(SGD, check=linear.check_weights)


def weights(coef, intercept=0.0):
    return {"coef": np.asarray(coef, dtype=float), "intercept": np.asarray(float(intercept))}


def result(province, n, coef, intercept=0.0, **metrics):
    return ClientResult(province, n, metrics, weights(coef, intercept))


def regression(seed, n=400, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, x @ np.array([1.0, -2.0, 0.5]) + 3.0 + shift + 0.01 * rng.normal(size=n)


def test_sgd_fits_a_linear_model_and_counts_its_steps():
    x, y = regression(0)
    config = {**SGD, "local_epochs": 20}
    fitted = LinearSGD().fit(x, y, None, TaskGroups.parse(config))
    np.testing.assert_allclose(fitted["coef"], [1.0, -2.0, 0.5], atol=0.02)
    assert float(fitted["intercept"]) == pytest.approx(3.0, abs=0.02)
    assert local_steps(len(y), TaskGroups.parse(config)) == 20 * 50


def test_sgd_is_seeded_and_the_proximal_term_pulls_towards_the_start():
    x, y = regression(1)
    plan = LocalPlan.of(TaskGroups.parse({**SGD, "sgd_seed": 7}))
    start = np.zeros(4)
    np.testing.assert_array_equal(sgd(x, y, start, plan), sgd(x, y, start, plan))
    free = np.linalg.norm(sgd(x, y, start, plan))
    held = np.linalg.norm(sgd(x, y, start, LocalPlan.of(TaskGroups.parse({**SGD, "mu": 5.0}))))
    assert held < free


def looped_sgd(x, y, start, plan, correction):
    """The textbook loop over mini-batches, one gradient step each: what `sgd` must equal."""
    design = np.column_stack([x, np.ones(len(x))])
    rng, w = np.random.default_rng(plan.seed), start.copy()
    for _ in range(plan.epochs):
        order = rng.permutation(len(y))
        for begin in range(0, len(y), plan.batch_size):
            batch = order[begin : begin + plan.batch_size]
            rows = design[batch]
            gradient = rows.T @ (rows @ w - y[batch]) / len(batch)
            w = w - plan.learning_rate * (gradient + plan.mu * (w - start) + correction)
    return w


@pytest.mark.parametrize(
    ("rows", "batch", "epochs", "mu"), [(400, 8, 3, 0.0), (5000, 64, 2, 0.5), (3, 64, 1, 0.0)]
)
def test_compiled_sgd_takes_the_same_steps_as_a_loop_over_batches(rows, batch, epochs, mu):
    """The compiled epoch takes the loop's steps, to 1e-9, a ragged last batch too."""
    x, y = regression(2, n=rows)
    plan = LocalPlan.of(
        TaskGroups.parse(
            {**SGD, "batch_size": batch, "local_epochs": epochs, "mu": mu, "sgd_seed": 5}
        )
    )
    start, correction = np.array([0.3, -0.1, 0.2, 1.0]), np.array([0.01, 0.0, -0.02, 0.005])
    np.testing.assert_allclose(
        sgd(x, y, start, plan, correction), looped_sgd(x, y, start, plan, correction), rtol=1e-9
    )


def test_sgd_takes_read_only_strided_rows_and_leaves_its_inputs_alone():
    """A province's scaled rows are read-only and its targets may be a strided view: the steps
    are the same as on fresh contiguous copies, and neither the rows nor the start move."""
    x, y = regression(3, n=500)
    plan = LocalPlan.of(TaskGroups.parse({**SGD, "sgd_seed": 2}))
    start = np.array([0.1, 0.2, -0.3, 0.5])
    expected = sgd(x.copy(), y.copy(), start.copy(), plan)
    rows, targets = np.asfortranarray(x), np.repeat(y, 2)[::2]
    rows.flags.writeable = False
    kept = start.copy()
    np.testing.assert_array_equal(sgd(rows, targets, start, plan), expected)
    np.testing.assert_array_equal(start, kept)
    np.testing.assert_array_equal(rows, x)


def test_fedavg_over_steps_equals_the_weighted_average_of_models():
    results = [result("a", 1, [0.0, 0.0]), result("b", 3, [4.0, 8.0], 4.0)]
    current = weights([1.0, 1.0], 1.0)
    merged = Federated(base()).aggregate_fit(1, results, [], current)
    expected = base().aggregate_fit(1, results, [], current)
    for name in ("coef", "intercept"):
        np.testing.assert_allclose(merged[name], expected[name])
    assert Federated(base()).aggregate_fit(1, [], [Failure("a", "x")], current) is None


def test_each_province_gets_its_own_seed_and_fedprox_sends_mu():
    strategy = strategies.wrap(base(), arguments(strategy="fedprox", mu=0.5))
    plan = strategy.configure_fit(3, None, ["hubei", "fujian"])
    assert plan[0].config["mu"] == 0.5 and plan[0].config["model"] == "lr-sgd"
    assert plan[0].config["sgd_seed"] != plan[1].config["sgd_seed"]


def test_fednova_normalises_each_step_by_its_local_steps():
    current = weights([0.0])
    # b took four times the steps of a to get twice as far: per step it moved half as much.
    results = [result("a", 1, [1.0], local_steps=1.0), result("b", 1, [2.0], local_steps=4.0)]
    strategy = FedNova(base())
    for r in results:
        strategy.accept_fit(1, r)
    merged = strategy.aggregate_fit(1, results, [], current)
    # τ_eff = 2.5, normalised mean = (1 + 0.5) / 2 = 0.75 → 1.875; FedAvg would say 1.5.
    np.testing.assert_allclose(merged["coef"], [1.875])
    with pytest.raises(UpdateError, match="local_steps"):
        strategy.accept_fit(1, result("c", 1, [0.0]))


def test_fedavgm_accumulates_momentum_and_fedadam_moves_each_coordinate_about_lr():
    momentum = FedAvgM(base(), lr=1.0, momentum=0.5)
    current = weights([0.0])
    first = momentum.aggregate_fit(1, [result("a", 1, [1.0])], [], current)
    second = momentum.aggregate_fit(2, [result("a", 1, [2.0])], [], first)
    np.testing.assert_allclose(second["coef"], [2.5])  # v = 0.5·1 + 1
    adam = FedAdam(base(), lr=0.1)
    moved = adam.aggregate_fit(1, [result("a", 1, [100.0, -1.0], 5.0)], [], weights([0.0, 0.0]))
    np.testing.assert_allclose(moved["coef"], [0.1, -0.1], rtol=0.15)


def test_scaffold_sends_its_variate_checks_and_strips_the_clients_changes():
    strategy = Scaffold(base())
    assert strategy.configure_fit(1, None, ["a"])[0].parameters is None
    current = weights([0.0, 0.0])
    sent = strategy.configure_fit(2, current, ["a"])[0].parameters
    np.testing.assert_array_equal(sent[CONTROL], np.zeros(3))
    update = {**weights([1.0, 1.0]), CONTROL_DELTA: np.array([3.0, 0.0, 0.0])}
    strategy.check_update(update, 2)
    with pytest.raises(UpdateError, match="scaffold"):
        strategy.check_update(weights([1.0, 1.0]), 2)
    with pytest.raises(UpdateError, match="scaffold"):
        strategy.check_update({**update, CONTROL_DELTA: np.zeros(2)}, 2)
    merged = strategy.aggregate_fit(
        2, [ClientResult("a", 1, {}, update)], [Failure("b", "x")], None
    )
    assert set(merged) == {"coef", "intercept"}
    np.testing.assert_allclose(strategy.control, [1.5, 0.0, 0.0])  # ΣΔc_i over N = 2 clients


def test_scaffold_clients_keep_their_variate_and_correct_their_drift():
    x, y = regression(2)
    client = LinearSGD()
    start = {**weights([0.0, 0.0, 0.0]), CONTROL: np.zeros(4)}
    first = client.fit(x, y, start, TaskGroups.parse(SGD))
    np.testing.assert_allclose(first[CONTROL_DELTA], client.control)
    kept = client.control.copy()
    second = client.fit(x, y, {**weights([0.0, 0.0, 0.0]), CONTROL: kept}, TaskGroups.parse(SGD))
    # With c = c_i the correction vanishes: the same steps as plain SGD from the same start.
    plain = LinearSGD().fit(x, y, weights([0.0, 0.0, 0.0]), TaskGroups.parse(SGD))
    np.testing.assert_allclose(second["coef"], plain["coef"])


def test_qfedavg_with_q_zero_is_the_plain_mean_and_larger_q_favours_the_worse_province():
    current = weights([0.0])
    results = [
        result("good", 9, [1.0], start_loss=1.0),
        result("bad", 1, [-1.0], start_loss=4.0),
    ]
    fair = QFedAvg(base(), q=0.0).aggregate_fit(2, results, [], current)
    np.testing.assert_allclose(fair["coef"], [0.0])  # unweighted by samples
    tilted = QFedAvg(base(), q=2.0).aggregate_fit(2, results, [], current)
    assert tilted["coef"][0] < 0  # the bad province's direction wins
    with pytest.raises(UpdateError, match="start_loss"):
        QFedAvg(base(), q=1.0).accept_fit(2, result("c", 1, [0.0]))
    (asked,) = QFedAvg(base(), q=1.0).configure_fit(2, current, ["c"])
    assert StartMetrics.from_config(asked.config).start_metrics is True


def arguments(**overrides) -> StrategySettings:
    defaults = dict(
        strategy="fedavg",
        aggregation="mean",
        trim_fraction=0.2,
        krum_f=2,
        mu=0.01,
        q=1.0,
        server_lr=None,
        server_momentum=0.9,
        local_epochs=None,
        learning_rate=None,
        batch_size=None,
        compression="none",
        topk_fraction=0.1,
    )
    return StrategySettings(**{**defaults, **overrides})


def test_flags_choose_the_strategy_and_refuse_what_cannot_work():
    plain = base()
    assert strategies.wrap(plain, arguments()) is plain
    assert isinstance(strategies.wrap(plain, arguments(strategy="scaffold")), Scaffold)
    tuned = strategies.wrap(plain, arguments(local_epochs=3))
    assert tuned.configure_fit(1, None, ["a"])[0].config["local_epochs"] == 3
    with pytest.raises(ConfigError, match="q-FedAvg"):
        arguments(strategy="qfedavg", aggregation="median")
    with pytest.raises(ConfigError, match="--learning-rate must be positive"):
        arguments(learning_rate=-1.0)
    with pytest.raises(ConfigError, match="SCAFFOLD"):
        arguments(strategy="scaffold", compression="int8")
    compressed = strategies.wrap(plain, arguments(compression="topk"))
    assert isinstance(compressed, Compressed) and compressed.inner is plain


def province_task(province: str, rows: int, seed: int) -> tuple[LocalWork, dict, tuple]:
    """A province's work, an lr-sgd task config with its own statistics as the global ones,
    and the scaler."""
    work = LocalWork(synthesize_province(province, rows, seed))
    config = {**SGD, "setting": "next-day", "test_fraction": 0.2, "seed": 0, "round": 2}
    data = work.split(TaskGroups.parse(config))
    sums = preprocess.statistics(data.x_train, data.y_train)
    stats = GlobalStatistics.from_sums([*data.features, preprocess.TARGET], [sums])
    return work, {**config, **TaskContext.from_statistics(stats).to_config()}, stats.scaler()


def test_a_province_reports_its_steps_and_loss_and_compresses_its_step():
    work, config, scaler = province_task("hubei", 5_000, 1)
    data = work.split(TaskGroups.parse(config))
    # One standard deviation of tomorrow's change above the truth, everywhere.
    start = weights(np.zeros(data.x_train.shape[1]), 1.0)
    outcome = work.train(
        TaskGroups.parse({**config, **StartMetrics(True).to_config()}), scaler, start
    )
    assert outcome.metrics["local_steps"] == local_steps(
        len(data.y_train), TaskGroups.parse(config)
    )
    assert outcome.metrics["start_mse"] > outcome.metrics["train_mse"]
    # q-FedAvg's F_i is the steps' own loss, ½·MSE of the standardised change, not yuan².
    in_yuan = outcome.metrics["start_mse"] / (2 * float(config["change_std"]) ** 2)
    assert outcome.metrics["start_loss"] == pytest.approx(in_yuan)
    # Unasked, the two extra passes are skipped and the update is the same.
    plain = work.train(TaskGroups.parse(config), scaler, start)
    assert "start_mse" not in plain.metrics and "start_loss" not in plain.metrics
    for name, array in outcome.arrays.items():
        np.testing.assert_array_equal(plain.arrays[name], array)
    squeezed = work.train(
        TaskGroups.parse({**config, "compression": "int8", "topk_fraction": 0.1}), scaler, start
    )
    assert set(squeezed.arrays) == {VALUES, SCALE}


def test_lr_sgd_learns_the_standardised_change_and_answers_in_yuan():
    work, config, scaler = province_task("zhejiang", 20_000, 3)
    config = {**config, **build_strategy("lr-sgd").model_config}
    data = work.split(TaskGroups.parse(config))
    x = preprocess.scale(data.x_train, *scaler)
    zero = trainers.predict_sgd(weights(np.zeros(x.shape[1])), x, TaskGroups.parse(config))
    today = data.x_train[:, data.features.index("close")]
    np.testing.assert_allclose(zero, today + config["change_mean"])
    exact = linear.predict(linear.fit_weights(x, data.y_train), x)
    # Where there is a little signal to learn, a constant step hovers above the least-squares
    # fit by its own noise: at a quarter of the default step, five passes come within 2 % of it
    # (one pass at the default step does not: 7.8 % above it on these rows).
    slow = {**config, "learning_rate": config["learning_rate"] / 4, "local_epochs": 5}
    fitted = trainers.predict_sgd(
        trainers.fit_sgd(x, data.y_train, None, TaskGroups.parse(slow)), x, TaskGroups.parse(slow)
    )
    assert np.mean((fitted - data.y_train) ** 2) < 1.02 * np.mean((exact - data.y_train) ** 2)
