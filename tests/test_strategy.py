import numpy as np

from common.models import linear
from server.strategy import ClientResult, Evaluation, ExactLinear, Failure, FedAvg


def result(province, n, **arrays):
    return ClientResult(province, n, {}, {k: np.asarray(v, dtype=float) for k, v in arrays.items()})


def test_fedavg_weights_by_samples_and_is_told_about_failures():
    strategy = FedAvg({"model": "lr"}, check=linear.check_weights)
    results = [
        result("hubei", 1, coef=[0.0, 0.0], intercept=0.0),
        result("fujian", 3, coef=[4.0, 8.0], intercept=4.0),
    ]
    merged = strategy.aggregate_fit(1, results, [Failure("sichuan", "timed out")], None)
    np.testing.assert_allclose(merged["coef"], [3.0, 6.0])
    assert float(merged["intercept"]) == 3.0
    assert strategy.aggregate_fit(1, [], [Failure("sichuan", "x")], None) is None


def test_configure_sends_the_model_config_to_every_province():
    strategy = FedAvg({"model": "lr"}, check=linear.check_weights)
    plan = strategy.configure_fit(2, None, ["hubei", "fujian"])
    assert [i.province for i in plan] == ["hubei", "fujian"]
    assert plan[0].config == {"model": "lr", "round": 2}


def test_exact_linear_solves_the_summed_equations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 2)), rng.normal(size=40)
    halves = [linear.normal_equations(x[:10], y[:10]), linear.normal_equations(x[10:], y[10:])]
    results = [ClientResult(p, 20, {}, h) for p, h in zip(["a", "b"], halves, strict=True)]
    merged = ExactLinear({"model": "lr-exact"}).aggregate_fit(1, results, [], None)
    whole = linear.normal_equations(x, y)
    np.testing.assert_allclose(
        merged["coef"], linear.solve_normal_equations(whole["xtx"], whole["xty"])["coef"]
    )


def test_evaluation_is_weighted_by_test_rows():
    scores = [ClientResult("b", 1, {"mse": 4.0}), ClientResult("a", 3, {"mse": 0.0})]
    evaluation = Evaluation.weighted(scores)
    assert evaluation.mse == 1.0
    assert list(evaluation.per_client) == ["a", "b"]
    assert evaluation.per_client["b"] == {"mse": 4.0, "n_test": 1}
