"""One registry of models: each entry names its server aggregation and client training."""

import ast
import pathlib

import pytest

from client.trainers import Trainer, trainer_for
from common.hyperparameters import ALL_OPTIONS
from common.registry import MODELS, model_spec
from server.cli import parse_args
from server.models import build_strategy
from server.strategy import FedAvg, Strategy

# The keys fine-tuning has always set a model's local passes under.
OWN_EPOCHS = {"lr-sgd": "local_epochs", "svm": "svm_epochs"}

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_registered_model_has_a_server_strategy_and_a_client_trainer():
    for spec in MODELS.values():
        assert isinstance(build_strategy(spec.name), Strategy), spec.name
        assert isinstance(trainer_for(spec.name), Trainer), spec.name
        assert build_strategy(spec.name).model_config["model"] == spec.name
    with pytest.raises(ValueError, match="unknown model 'xgb'"):
        trainer_for("xgb")


def _compared_names(tree: ast.AST) -> list[str]:
    """String constants compared with ==, !=, in or not in: capability switches by name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                for leaf in ast.walk(side):
                    if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                        found.append(leaf.value)
    return found


def test_no_model_is_switched_on_by_name_outside_the_registry():
    offenders = []
    for package in ("server", "client", "common"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "registry.py":
                continue
            names = set(_compared_names(ast.parse(path.read_text()))) & set(MODELS)
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(names)]
    assert offenders == []


def test_capabilities_agree_with_what_the_server_builds():
    for spec in MODELS.values():
        strategy = build_strategy(spec.name)
        assert spec.vector == (type(strategy) is FedAvg), spec.name
        assert spec.gradient == ("learning_rate" in strategy.model_config), spec.name
        if spec.own_epochs is not None:  # the task carries the passes fine-tuning sets
            before = spec.own_epochs.from_config(strategy.model_config).to_config()
            after = spec.own_epochs.from_config(before).with_epochs(7).to_config()
            changed = {key: value for key, value in after.items() if before[key] != value}
            assert changed == {OWN_EPOCHS[spec.name]: 7}, spec.name
        if spec.hyperparameters:
            assert any(name.startswith(spec.hyperparameters) for name in ALL_OPTIONS)
        assert ("async" in spec.schedules) == spec.vector


def test_an_unknown_model_is_named_with_the_ones_there_are():
    with pytest.raises(ValueError, match="unknown model 'xgb'; expected one of: lr, "):
        model_spec("xgb")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "lr-exact", "--strategy", "fedadam"], "weight vectors"),
        (["--model", "svm", "--compression", "int8", "--privacy", "dp-local"], "without --privacy"),
        (["--model", "lr", "--strategy", "fednova"], "gradient steps"),
        (["--model", "svm", "--local-epochs", "2"], "apply to lr-sgd"),
        (["--model", "rf", "--mode", "async"], "needs a model of weights"),
        (["--model", "lr", "--robust-sums"], "--robust-sums applies to --model lr-exact only"),
    ],
)
def test_what_a_model_cannot_do_is_refused_by_its_capabilities(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
