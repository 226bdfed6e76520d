"""The server's side of each registered model (common/registry.py): the strategy aggregating it.

Hyperparameters (common/hyperparameters.py) reach the strategy as options; the strategy puts
the model's own into every task's config.
"""

from __future__ import annotations

from collections.abc import Mapping

from common.hyperparameters import defaults
from common.models import linear, rff
from common.models.ensemble import MemberCodec
from common.registry import ModelSpec, model_spec
from common.wire import ConfigScalar
from server.ensemble import EnsembleUnion, forest_quotas, one_each
from server.strategies.trees import HistogramTrees
from server.strategy import ExactLinear, FedAvg, Strategy

Options = Mapping[str, ConfigScalar]
# lr-sgd's local training unless --local-epochs, --learning-rate or --batch-size say otherwise.
SGD_TRAINING = {"local_epochs": 1, "learning_rate": 0.02, "batch_size": 64}


def _config(spec: ModelSpec, options: Options) -> dict[str, ConfigScalar]:
    """What every task of the model carries: its name and its own hyperparameters."""
    prefix = spec.hyperparameters
    own = {k: v for k, v in options.items() if prefix and k.startswith(prefix)}
    return {"model": spec.name, **own}


def _members(spec: ModelSpec) -> MemberCodec:
    if spec.members is None:
        raise ValueError(f"model {spec.name} is not an ensemble")
    return spec.members


# One builder per kind of aggregation; each registry entry names its own (common/registry.py).


def weights(spec: ModelSpec, options: Options) -> Strategy:
    """lr: FedAvg of locally fitted least-squares weights."""
    return FedAvg(_config(spec, options), check=linear.check_weights)


def exact(spec: ModelSpec, options: Options) -> Strategy:
    return ExactLinear(_config(spec, options))


def sgd(spec: ModelSpec, options: Options) -> Strategy:
    return FedAvg({**_config(spec, options), **SGD_TRAINING}, check=linear.check_weights)


def forest(spec: ModelSpec, options: Options) -> Strategy:
    quotas = forest_quotas(int(options["rf_global_trees"]), str(options["rf_allocation"]))
    grow_share = "rf_n_estimators" if options["rf_grow"] == "share" else None
    return EnsembleUnion(_config(spec, options), _members(spec), quotas, grow_share)


def trees(spec: ModelSpec, options: Options) -> Strategy:
    """gbdt and rf-hist: trees grown from histograms the provinces answer, one question a phase."""
    if spec.trees is None:
        raise ValueError(f"model {spec.name} is not grown from histograms")
    settings = spec.trees.settings(options)
    return HistogramTrees({"model": spec.name, **settings.to_mapping(spec.trees.prefix)}, settings)


def svm(spec: ModelSpec, options: Options) -> Strategy:
    components = int(options["svm_features"])
    rff.check_components(components)
    return FedAvg(
        _config(spec, options),
        check=lambda arrays, _n_features: rff.check_weights(arrays, components),
    )


def local_rbf(spec: ModelSpec, options: Options) -> Strategy:
    return EnsembleUnion(_config(spec, options), _members(spec), one_each)


def build_strategy(model: str, options: Options | None = None) -> Strategy:
    """The model's strategy; `options` override the hyperparameters' defaults."""
    spec = model_spec(model)
    return spec.strategy_factory()(spec, {**defaults(), **(options or {})})
