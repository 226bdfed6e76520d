"""The forecast quantity (`--forecast price|change|return`): one definition of the target, the
naive forecasts and the oracle, the same in the federation, the centralised job and Spark."""

from dataclasses import replace

import numpy as np
import pytest

from baselines import agreement, centralised, centralised_cli, report, spark
from baselines.data import DataOptions, load_frames, prepare, write_synthetic
from baselines.models import ModelOptions
from baselines.report import Comparison
from client.groups import TaskGroups
from client.local import LocalWork
from common import forecast, preprocess, quantity
from common.data import synthesize, synthesize_province
from common.data.synthetic import DEFAULT_SEED
from common.launch import LocalFederation
from common.models.histgrow import TREE_MODELS
from common.provinces import PROVINCES
from common.settings import DataSettings
from server.cli import parse_args
from server.summary import format_summary
from tests import in_memory
from tests.test_baselines import SMALL
from tests.test_federation import FAST

ROWS, SEED = in_memory.ROWS, in_memory.SEED
MOVES = ("change", "return")
# Small histogram trees, so a federated gbdt run takes seconds.
GBDT = {"trees": 6, "max_depth": 3}


def test_each_quantity_is_tomorrows_price_against_todays_close_row_by_row():
    raw = synthesize_province("hubei", 5_000, 1)
    price = preprocess.split(raw)
    close = price.x_test[:, price.features.index("close")]
    change = preprocess.split(raw, forecast_quantity="change")
    ret = preprocess.split(raw, forecast_quantity="return")
    np.testing.assert_allclose(change.y_test, price.y_test - close)
    np.testing.assert_allclose(ret.y_test, price.y_test / close - 1)
    # the oracle transforms exactly: today's close is known when the forecast is made
    oracle = price.reference_test["oracle"]
    np.testing.assert_allclose(change.reference_test["oracle"], oracle - close)
    np.testing.assert_allclose(ret.reference_test["oracle"], oracle / close - 1)
    for moved in (change, ret):
        np.testing.assert_array_equal(moved.x_test, price.x_test)  # same rows, same features
        for name in forecast.NAIVE:  # persistence and last close of a move: no move
            assert not moved.reference_test[name].any() and not moved.reference_train[name].any()
    assert price.reference_test["persistence"].any()  # ... unlike the price's (the test can fail)


@pytest.fixture(scope="module")
def market():
    return synthesize(50_000, DEFAULT_SEED)


@pytest.mark.parametrize("name", quantity.QUANTITIES)
def test_the_oracle_beats_the_naive_forecast_in_every_quantity(market, name):
    splits = [preprocess.split(frame, forecast_quantity=name) for frame in market.values()]
    truth = np.concatenate([s.y_test for s in splits])
    mse = {
        reference: np.mean(
            (np.concatenate([s.reference_test[reference] for s in splits]) - truth) ** 2
        )
        for reference in (*forecast.NAIVE, "oracle")
    }
    assert mse["oracle"] < min(mse[naive] for naive in forecast.NAIVE)


def test_a_quantity_that_does_not_exist_or_does_not_fit_is_refused_with_its_reason(capsys):
    with pytest.raises(ValueError, match="unknown forecast quantity 'level'; expected one of: "):
        quantity.check("level")
    with pytest.raises(SystemExit):
        parse_args(["--insecure", "--forecast", "level"])
    assert "--forecast: invalid choice: 'level'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--insecure", "--forecast", "return", "--setting", "paper"])
    assert "--forecast return: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        centralised_cli.main(["--forecast", "change", "--setting", "paper"])
    assert "--forecast change: " in capsys.readouterr().err
    # a client handed a task naming no quantity it knows refuses it, saying which
    work = LocalWork(synthesize_province("hubei", 2_000, 1))
    config = {**DataSettings("next-day", 0.2, 0).to_config(), "forecast": "level"}
    with pytest.raises(ValueError, match="unknown forecast quantity 'level'"):
        work.split(TaskGroups.parse(config))
    # a return divides by today's close: adjusted prices at or below zero are named, not divided
    raw = work.raw.assign(close=work.raw["close"].where(work.raw.index != 5, -1.0))
    with pytest.raises(ValueError, match=r"1 row\(s\) have a close of 0 or below"):
        preprocess.split(raw, forecast_quantity="return")


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("lr", ModelOptions()),
        ("rf", SMALL),
        ("svm", SMALL),
        (
            "gbdt",
            replace(SMALL, tree_settings={"gbdt": replace(TREE_MODELS["gbdt"].defaults, **GBDT)}),
        ),
    ],
)
def test_the_change_is_the_price_less_todays_close_for_every_model(model, options):
    """Each model's change from today's close is the price's, so a price model and a change model
    make the same forecasts: equal MSEs, where a model that took the close off twice would not."""
    price = centralised.run(model, DataOptions(rows=5_000, seed=SEED), options)
    change = centralised.run(model, DataOptions(rows=5_000, seed=SEED, forecast="change"), options)
    assert change["final"]["mse"] == pytest.approx(price["final"]["mse"], rel=1e-6)
    assert change["final"]["naive_mse"] == pytest.approx(price["final"]["last_close_mse"], rel=1e-9)
    assert change["forecast"] == quantity.record("change")


@pytest.mark.parametrize("name", MOVES)
def test_the_federation_and_the_centralised_job_forecast_the_same_quantity(tmp_path, name):
    federated = in_memory.run(tmp_path, "--model", "lr-exact", "--rounds", "1", "--forecast", name)
    data = DataOptions(rows=ROWS, seed=SEED, forecast=name)
    central = centralised.run("lr", data, ModelOptions())
    assert federated["forecast"] == central["forecast"] == quantity.record(name)
    f, c = federated["final"], central["final"]
    assert f["mse"] == pytest.approx(c["mse"], rel=1e-7)  # lr-exact is the union's least squares
    for key in ("persistence_mse", "last_close_mse", "oracle_mse", "naive_mse"):
        assert f[key] == pytest.approx(c[key], rel=1e-12)
    for province, score in c["per_client"].items():
        assert f["per_client"][province]["n_test"] == score["n_test"]
    # the naive forecast of a move is no move: its MSE is the mean square of the move itself
    splits = prepare(load_frames(data), data).splits.values()
    truth = np.concatenate([s.y_test for s in splits])
    assert f["persistence_mse"] == f["last_close_mse"] == pytest.approx(np.mean(truth**2))
    assert f"forecast {name}: " in format_summary(federated)


def test_federated_trees_learn_a_return_from_no_move_as_the_centralised_trees(tmp_path):
    flags = ["--gbdt-trees", str(GBDT["trees"]), "--gbdt-max-depth", str(GBDT["max_depth"])]
    federated = in_memory.run(
        tmp_path, "--model", "gbdt", "--rounds", "1", "--forecast", "return", *flags
    )
    settings = {"gbdt": replace(TREE_MODELS["gbdt"].defaults, **GBDT)}
    data = DataOptions(rows=ROWS, seed=SEED, forecast="return")
    central = centralised.run("gbdt", data, ModelOptions(tree_settings=settings))
    assert federated["final"]["mse"] == pytest.approx(central["final"]["mse"], rel=1e-9)
    # a tree model that added back today's close would miss each return by the price level
    assert central["final"]["mse"] < 2 * central["final"]["naive_mse"]


@pytest.mark.integration  # a Spark driver and its JVM, a process of its own
def test_spark_forecasts_the_quantity_the_centralised_job_does(spark_session, tmp_path):
    folder = write_synthetic(tmp_path / "market", 5_000, SEED)
    data = DataOptions(data=str(folder), rows=5_000, seed=SEED, forecast="return")
    outcome = spark.run(spark_session, "lr", data, ModelOptions(), "mllib")
    reference = centralised.run("lr", data, ModelOptions())
    assert outcome["forecast"] == reference["forecast"] == quantity.record("return")
    assert outcome["final"]["mse"] == pytest.approx(reference["final"]["mse"], rel=1e-4)
    for name in ("persistence_mse", "last_close_mse", "oracle_mse"):
        assert outcome["final"][name] == pytest.approx(reference["final"][name], rel=1e-12)


@pytest.mark.integration
def test_a_server_and_nine_client_processes_forecast_the_return(tmp_path):
    server_args = [*FAST, "--forecast", "return"]
    federation = LocalFederation(tmp_path, "lr-exact", 1, ROWS, SEED, server_args=server_args)
    federation.start()
    codes = federation.wait(timeout=240)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    results = federation.results()
    central = centralised.run(
        "lr", DataOptions(rows=ROWS, seed=SEED, forecast="return"), ModelOptions()
    )
    assert results["forecast"] == quantity.record("return")
    assert results["config"]["forecast"] == "return"
    assert results["final"]["mse"] == pytest.approx(central["final"]["mse"], rel=1e-7)
    assert results["final"]["oracle_mse"] == pytest.approx(
        central["final"]["oracle_mse"], rel=1e-12
    )


def test_the_reproduction_report_says_which_quantity_its_mses_are_in(tmp_path):
    comparison = Comparison(forecast="return", target_std=0.02)
    text = "\n".join(agreement.section(comparison))
    assert "MSE in squared return (no unit)" in text and "different quantities" in text
    table = report.write_table(comparison, "mse", tmp_path)[1].read_text()
    assert "squared return (no unit); the paper's: the price, yuan²" in table
    assert "different quantities" not in "\n".join(agreement.section(Comparison()))
