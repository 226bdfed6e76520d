"""The centralised and Spark jobs cross-validate as the federation does: the same folds of the
same rows, random in the paper setting and blocks of days an embargo apart forecasting tomorrow."""

import pytest

from baselines import centralised, centralised_cli, results, spark, spark_cli
from baselines.data import DataOptions
from baselines.models import ModelOptions
from tests import in_memory


@pytest.mark.parametrize(
    ("setting", "folds", "kind"), [("paper", 5, "random"), ("next-day", 3, "time")]
)
def test_centralised_folds_are_the_federations(tmp_path, setting, folds, kind):
    flags = ["--model", "lr-exact", "--rounds", "1", "--setting", setting]
    federated = in_memory.run(tmp_path, *flags, "--cv-folds", str(folds))
    data = DataOptions(rows=in_memory.ROWS, seed=in_memory.SEED, setting=setting)
    central = centralised.run("lr", data, ModelOptions(), cv_folds=folds)
    ours, theirs = central["model_selection"], federated["model_selection"]
    assert ours["kind"] == theirs["kind"] == kind and ours["folds"] == folds
    # lr-exact is the least squares of the union of each fold's training rows: fold by fold
    expected = theirs["best"]["fold_mse"]
    assert ours["best"]["fold_mse"] == pytest.approx(expected, rel=1e-7)
    assert ours["best"]["cv_mse"] == pytest.approx(theirs["best"]["cv_mse"], rel=1e-7)
    assert len(set(expected)) == folds  # the folds differ: a fold mix-up would show
    assert central["final"]["mse"] == pytest.approx(federated["final"]["mse"], rel=1e-7)
    assert "cross-validated MSE" in results.summary(central)


def test_the_centralised_command_refuses_a_single_fold(capsys):
    with pytest.raises(SystemExit):
        centralised_cli.main(["--cv-folds", "1"])
    assert "--cv-folds must be 0 (no cross-validation) or at least 2" in capsys.readouterr().err


@pytest.mark.integration  # a Spark driver and its JVM, a process of its own
@pytest.mark.parametrize(("setting", "folds"), [("paper", 3), ("next-day", 3)])
def test_spark_folds_are_the_federations(spark_session, tmp_path, setting, folds):
    """The paper's scheme per fold (fits per partition merged by a reduce) is FedAvg of the
    provinces' own fits, so Spark's folds score what the federation's do."""
    flags = ["--model", "lr", "--rounds", "1", "--setting", setting, "--cv-folds", str(folds)]
    federated = in_memory.run(tmp_path, *flags)
    data = DataOptions(rows=in_memory.ROWS, seed=in_memory.SEED, setting=setting)
    outcome = spark.run(spark_session, "lr", data, ModelOptions(), cv_folds=folds)
    ours, theirs = outcome["model_selection"], federated["model_selection"]
    assert (ours["kind"], ours["folds"]) == (theirs["kind"], folds)
    assert ours["best"]["fold_mse"] == pytest.approx(theirs["best"]["fold_mse"], rel=1e-7)
    assert len(set(ours["best"]["fold_mse"])) == folds
    assert "cv_seconds" in outcome["final"]["timings"]
    assert outcome["final"]["mse"] == pytest.approx(federated["final"]["mse"], rel=1e-7)


def test_the_spark_command_cross_validates_on_the_sklearn_engine_only(capsys):
    with pytest.raises(SystemExit):
        spark_cli.main(["--engine", "mllib", "--model", "lr", "--cv-folds", "3"])
    assert "--cv-folds cross-validates on the sklearn engine" in capsys.readouterr().err
