"""The models a federation can train: each one's name, and what it can and cannot do.

Server, client and baselines look a model up here instead of listing names or guessing its
capabilities from the type of its strategy. Each entry points to the server's aggregation of
the model (in server/models.py) and the client's training of it (in client/trainers.py) by
`module:name`, resolved when first asked for: this module stays importable by the baselines,
which import nothing from the server, and adding a model is one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from common.model_settings import LocalTraining, SvmSettings
from common.models.ensemble import MemberCodec
from common.models.forest import TREES
from common.models.histgrow import TREE_MODELS, TreeModel
from common.models.svr import SVRS

_CLOSED_FORM_TUNING = (
    "least squares on the province's training rows pulled towards the global weights, "
    "argmin ‖Xw − y‖²/n + λ‖w − w_global‖² with λ = {pull:g}"
)


@dataclass(frozen=True)
class ModelSpec:
    """A model, and the capabilities the rest of the system asks about."""

    name: str
    summary: str  # one clause of --model's help
    # `module:name` of the function building its server-side strategy from the spec and options.
    strategy: str
    # `module:name` of the client's Trainer for it.
    trainer: str
    # The update is a weight vector that FedAvg averages: the federated algorithms, privacy
    # modes, compression and the asynchronous schedule all act on such vectors only.
    vector: bool
    # Clients train it by gradient steps, so FedProx, FedNova, SCAFFOLD and q-FedAvg apply
    # and --local-epochs, --learning-rate and --batch-size mean something.
    gradient: bool
    fine_tuning: str  # how a province personalises it, formatted with {epochs} and {pull}
    members: MemberCodec | None = None  # an ensemble's members, as they travel
    hyperparameters: str | None = None  # the prefix of its hyperparameters' names
    # The settings group of its local passes; fine-tuning sets them with its `with_epochs`.
    own_epochs: type[LocalTraining | SvmSettings] | None = None
    closed_form: bool = False  # fitted in closed form: fine-tuning pulls towards the global
    # Its update is a province's normal equations, summed exactly: --robust-sums checks them.
    normal_equations: bool = False
    trees: TreeModel | None = None  # grown from histograms the provinces answer, as these trees
    # A union of local trees whose leaves each province noises under dp-local, the one privacy
    # mode that can protect a tree that is not a sum (common/models/leafnoise.py).
    noised_leaves: bool = False

    @property
    def schedules(self) -> tuple[str, ...]:
        """Asynchronous rounds apply each update as a step from another version: vectors only."""
        return ("sync", "async") if self.vector else ("sync",)

    def strategy_factory(self) -> Any:
        """The server's function building this model's strategy (server/models.py)."""
        return _resolve(self.strategy)

    def client_trainer(self) -> Any:
        """The client's Trainer for this model (client/trainers.py)."""
        return _resolve(self.trainer)


def _resolve(reference: str) -> Any:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _server(name: str) -> str:
    return f"server.models:{name}"


def _client(name: str) -> str:
    return f"client.trainers:{name}"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "lr",
            "FedAvg of locally fitted weights (the paper's)",
            _server("weights"),
            _client("LR"),
            vector=True,
            gradient=False,
            fine_tuning=_CLOSED_FORM_TUNING,
            closed_form=True,
        ),
        ModelSpec(
            "lr-exact",
            "summed normal equations solved once, equal to a centralised fit",
            _server("exact"),
            _client("LR_EXACT"),
            vector=False,
            gradient=False,
            fine_tuning=_CLOSED_FORM_TUNING,
            closed_form=True,
            normal_equations=True,
        ),
        ModelSpec(
            "lr-sgd",
            "FedAvg of local mini-batch SGD steps on the standardised change",
            _server("sgd"),
            _client("LR_SGD"),
            vector=True,
            gradient=True,
            fine_tuning="{epochs} epoch(s) of lr-sgd's own mini-batch SGD on the province's "
            "training rows, from the global weights",
            own_epochs=LocalTraining,
        ),
        ModelSpec(
            "rf",
            "a global forest of the provinces' trees",
            _server("forest"),
            _client("FOREST"),
            vector=False,
            gradient=False,
            fine_tuning="the global forest together with the forest the province grows on its "
            "training rows (as in a round), every tree weighing the same",
            members=TREES,
            hyperparameters="rf_",
            noised_leaves=True,
        ),
        ModelSpec(
            "gbdt",
            "gradient-boosted trees grown from histograms summed over the provinces, equal to "
            "centralised trees on the same bins; no row leaves a province",
            _server("trees"),
            _client("HISTOGRAM_TREES"),
            vector=False,
            gradient=False,
            fine_tuning="the global trees followed by as many the province boosts on its "
            "training rows from the global model's predictions (boosting continued locally)",
            hyperparameters=TREE_MODELS["gbdt"].prefix,
            trees=TREE_MODELS["gbdt"],
        ),
        ModelSpec(
            "rf-hist",
            "a random forest grown from histograms summed over the provinces, as gbdt",
            _server("trees"),
            _client("HISTOGRAM_TREES"),
            vector=False,
            gradient=False,
            fine_tuning="the global forest plus a forest the province grows on what the global "
            "one leaves unexplained of its training rows",
            hyperparameters=TREE_MODELS["rf-hist"].prefix,
            trees=TREE_MODELS["rf-hist"],
        ),
        ModelSpec(
            "svm",
            "FedAvg of an ε-insensitive linear model on random Fourier features (an RBF SVR "
            "that shares no rows)",
            _server("svm"),
            _client("SVM"),
            vector=True,
            gradient=False,
            fine_tuning="{epochs} epoch(s) of the svm's own local training (ε-insensitive loss "
            "on random Fourier features), from the global weights",
            hyperparameters="svm_",
            own_epochs=SvmSettings,
        ),
        ModelSpec(
            "svm-local-rbf",
            "the paper's exact RBF SVR on a subsample of each province, averaged, a comparison "
            "only: its support vectors are training rows and travel",
            _server("local_rbf"),
            _client("LOCAL_RBF"),
            vector=False,
            gradient=False,
            fine_tuning="the global SVRs together with one the province fits on its training "
            "rows (as in a round), each weighing the same",
            members=SVRS,
            hyperparameters="svm_",
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    """The model called `name`; ValueError naming the models there are if there is none."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(MODELS)}") from None


def vector_models() -> list[str]:
    return [spec.name for spec in MODELS.values() if spec.vector]
