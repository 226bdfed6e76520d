"""One registry of models: the server's aggregation and the client's training cover it exactly."""

import pytest

from client.trainers import TRAINERS
from common.hyperparameters import ALL_OPTIONS
from common.registry import MODELS, model_spec
from server.cli import parse_args
from server.models import STRATEGIES, build_strategy
from server.strategy import FedAvg


def test_server_and_client_implement_exactly_the_registered_models():
    assert set(STRATEGIES) == set(MODELS) == set(TRAINERS)


def test_capabilities_agree_with_what_the_server_builds():
    for spec in MODELS.values():
        strategy = build_strategy(spec.name)
        assert spec.vector == (type(strategy) is FedAvg), spec.name
        assert spec.gradient == ("learning_rate" in strategy.model_config), spec.name
        assert (
            spec.own_epochs is None
            or spec.own_epochs in strategy.model_config
            or (spec.own_epochs in ALL_OPTIONS)
        )
        if spec.hyperparameters:
            assert any(name.startswith(spec.hyperparameters) for name in ALL_OPTIONS)
        assert ("async" in spec.schedules) == spec.vector


def test_an_unknown_model_is_named_with_the_ones_there_are():
    with pytest.raises(ValueError, match="unknown model 'xgb'; expected one of: lr, "):
        model_spec("xgb")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "rf", "--privacy", "secagg"], "weight vectors"),
        (["--model", "lr-exact", "--strategy", "fedadam"], "weight vectors"),
        (["--model", "svm", "--compression", "int8", "--privacy", "dp-local"], "without --privacy"),
        (["--model", "lr", "--strategy", "fednova"], "gradient steps"),
        (["--model", "svm", "--local-epochs", "2"], "apply to lr-sgd"),
        (["--model", "rf", "--mode", "async"], "needs a model of weights"),
    ],
)
def test_what_a_model_cannot_do_is_refused_by_its_capabilities(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
