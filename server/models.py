"""The server's side of each registered model (common/registry.py): the strategy aggregating it.

Hyperparameters (common/hyperparameters.py) reach the strategy as options; the strategy puts
the model's own into every task's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from common.hyperparameters import defaults
from common.model_settings import ForestSettings, LocalTraining, ModelTask, SvmSettings
from common.models import linear, rff
from common.models.ensemble import MemberCodec
from common.registry import ModelSpec, model_spec
from common.settings import TaskSettings
from common.wire import ConfigScalar
from server.ensemble import EnsembleUnion, forest_quotas, one_each
from server.strategies.trees import HistogramTrees
from server.strategy import ExactLinear, FedAvg, Strategy

Options = Mapping[str, ConfigScalar]
# lr-sgd's local training unless --local-epochs, --learning-rate or --batch-size say otherwise.
SGD_TRAINING = LocalTraining(local_epochs=1, learning_rate=0.02, batch_size=64)


def _config(spec: ModelSpec, own: TaskSettings | None = None) -> dict[str, ConfigScalar]:
    """What every task of the model carries: its name and its own hyperparameters."""
    return {**ModelTask(spec.name).to_config(), **(own.to_config() if own else {})}


def _members(spec: ModelSpec) -> MemberCodec:
    if spec.members is None:
        raise ValueError(f"model {spec.name} is not an ensemble")
    return spec.members


# One builder per kind of aggregation; each registry entry names its own (common/registry.py).


def weights(spec: ModelSpec, options: Options) -> Strategy:
    """lr: FedAvg of locally fitted least-squares weights."""
    return FedAvg(_config(spec), check=linear.check_weights)


def exact(spec: ModelSpec, options: Options) -> Strategy:
    return ExactLinear(_config(spec))


def sgd(spec: ModelSpec, options: Options) -> Strategy:
    return FedAvg(_config(spec, SGD_TRAINING), check=linear.check_weights)


def forest(spec: ModelSpec, options: Options) -> Strategy:
    settings = ForestSettings.from_config(options)
    quotas = forest_quotas(settings.rf_global_trees, settings.rf_allocation)

    def grow_share(share: int) -> dict[str, ConfigScalar]:
        return replace(settings, rf_n_estimators=share).to_config()

    grows = grow_share if settings.rf_grow == "share" else None
    return EnsembleUnion(_config(spec, settings), _members(spec), quotas, grows)


def trees(spec: ModelSpec, options: Options) -> Strategy:
    """gbdt and rf-hist: trees grown from histograms the provinces answer, one question a phase."""
    if spec.trees is None:
        raise ValueError(f"model {spec.name} is not grown from histograms")
    settings = spec.trees.settings(options)
    return HistogramTrees({**_config(spec), **settings.to_mapping(spec.trees.prefix)}, settings)


def svm(spec: ModelSpec, options: Options) -> Strategy:
    settings = SvmSettings.from_config(options)
    components = settings.svm_features
    rff.check_components(components)
    return FedAvg(
        _config(spec, settings),
        check=lambda arrays, _n_features: rff.check_weights(arrays, components),
    )


def local_rbf(spec: ModelSpec, options: Options) -> Strategy:
    return EnsembleUnion(_config(spec, SvmSettings.from_config(options)), _members(spec), one_each)


def build_strategy(model: str, options: Options | None = None) -> Strategy:
    """The model's strategy; `options` override the hyperparameters' defaults."""
    spec = model_spec(model)
    return spec.strategy_factory()(spec, {**defaults(), **(options or {})})
