"""The centralised job cross-validates as the federation does: the same folds of the same rows,
random in the paper setting and blocks of days an embargo apart forecasting tomorrow."""

import pytest

from baselines import centralised, centralised_cli, results
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
