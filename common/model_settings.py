"""A task's model settings, typed as common/settings.py types its data settings: which model,
its hyperparameters (common/hyperparameters.py says what each means) and its local training.

The server builds each group from its options and puts it into the task config with
`to_config`; the client reads it back with `from_config`, which refuses a missing setting or
one of the wrong kind by name. The field names are the config keys the wire has always
carried, so clients and servers from before these classes read the same tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from common.settings import TaskSettings


@dataclass(frozen=True)
class ModelTask(TaskSettings):
    """Which registered model (common/registry.py) a task is for."""

    model: str


@dataclass(frozen=True)
class LocalTraining(TaskSettings):
    """Gradient training on a province's rows: passes, step size, batch, and FedProx's pull
    μ towards the global weights (unset outside FedProx: none)."""

    local_epochs: int
    learning_rate: float
    batch_size: int
    mu: float | None = None

    def with_epochs(self, epochs: int) -> LocalTraining:
        """The same training for `epochs` passes: how a province fine-tunes lr-sgd."""
        return replace(self, local_epochs=epochs)


@dataclass(frozen=True)
class Shuffle(TaskSettings):
    """The seed of one province's mini-batch order in one task; unset, the round's number."""

    sgd_seed: int | None = None


@dataclass(frozen=True)
class MemberSeed(TaskSettings):
    """The seed of the ensemble members (the forest's trees) one province grows in one task."""

    random_state: int


# A drawn tree's depth (rf under dp-local) when --rf-max-depth leaves it unlimited (0): 256
# leaves at most, some hundreds of rows each for a province of tens of thousands.
DRAWN_DEPTH = 8


@dataclass(frozen=True)
class ForestSettings(TaskSettings):
    """The random forest's hyperparameters (--rf-*)."""

    rf_n_estimators: int
    rf_global_trees: int
    rf_allocation: str
    rf_grow: str
    rf_criterion: str
    rf_min_samples_split: int
    rf_max_features: float
    rf_bootstrap: bool
    rf_max_depth: int
    rf_min_samples_leaf: int
    rf_bins_per_decade: int
    rf_target: str

    @property
    def drawn_depth(self) -> int:
        """The depth of the trees a province draws under dp-local: the one the province draws
        and the one the server discloses, from one place."""
        return self.rf_max_depth or DRAWN_DEPTH

    def tree_growing(self, seed: int) -> dict[str, Any]:
        """`common.models.forest.fit_forest`'s arguments, for trees grown from `seed`."""
        return {
            "n_estimators": self.rf_n_estimators,
            "criterion": self.rf_criterion,
            "min_samples_split": self.rf_min_samples_split,
            "max_features": self.rf_max_features,
            "bootstrap": self.rf_bootstrap,
            "max_depth": self.rf_max_depth or None,  # 0: grow until leaves are pure
            "min_samples_leaf": self.rf_min_samples_leaf,
            "bins_per_decade": self.rf_bins_per_decade,
            "random_state": seed,
        }


@dataclass(frozen=True)
class SvmSettings(TaskSettings):
    """The support vector machines' hyperparameters (--svm-*): svm and svm-local-rbf."""

    svm_target: str
    svm_c: float
    svm_epsilon: float
    svm_gamma: str | float  # 'scale', or the RBF width itself
    svm_features: int
    svm_seed: int
    svm_learning_rate: float
    svm_epochs: int
    svm_subsample: int

    def with_epochs(self, epochs: int) -> SvmSettings:
        """The same machine trained for `epochs` passes: how a province fine-tunes the svm."""
        return replace(self, svm_epochs=epochs)


@dataclass(frozen=True)
class StartMetrics(TaskSettings):
    """Whether a province scores the global model on its training rows before it trains (two
    more passes over them, which only q-FedAvg asks for)."""

    start_metrics: bool = False
