"""FedAvg's family, seen as steps: each client's change to the global weights, combined, applied.

Writing FedAvg as "global + mean of the clients' steps" is what lets one class carry the rest:
a robust combiner replaces the mean, FedNova rescales each step by its number of local steps,
FedAvgM and FedAdam put a server optimiser on the combined step, SCAFFOLD adds control
variates, and q-FedAvg reweighs the steps by each province's loss. FedProx changes only the
clients' objective, so on the server it is this class with `mu` in the config.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from common.model_settings import LocalTraining, Shuffle, StartMetrics
from common.models.checks import UpdateError
from common.scaffold import CONTROL, CONTROL_DELTA
from common.settings import RoundNumber
from common.tensors import Arrays
from common.vectors import flatten, unflatten
from common.wire import ConfigScalar
from server.folding import Folding
from server.strategies.robust import Combiner, mean, median
from server.strategy import CARRIES_STATE, ClientResult, Failure, FedAvg, Instruction, Strategy


def _shuffle(server_round: int, province: str) -> Shuffle:
    return Shuffle(zlib.crc32(f"{server_round}:{province}".encode()))


class Federated(Strategy):
    """FedAvg over steps from the global weights, combined by `combine` (the mean by default)."""

    # Whether the server's step is `move` of the steps' weighted mean alone, so updates can be
    # folded into a running sum as they arrive (server/folding.py); a subclass that weighs or
    # corrects each step by itself says False.
    mean_of_steps = True

    def __init__(
        self,
        base: FedAvg,
        config: Mapping[str, ConfigScalar] | None = None,
        combine: Combiner = mean,
    ) -> None:
        super().__init__({**base.model_config, **(config or {})})
        self.base = base
        self.combine = combine
        self._folding = Folding()

    def configure_fit(
        self, server_round: int, parameters: Arrays | None, provinces: list[str]
    ) -> list[Instruction]:
        config = {**self.model_config, **RoundNumber(server_round).to_config()}
        sent = self.downlink(parameters)
        # Each province shuffles its mini-batches differently, and differently every round.
        return [
            Instruction(p, {**config, **_shuffle(server_round, p).to_config()}, sent)
            for p in provinces
        ]

    def downlink(self, parameters: Arrays | None) -> Arrays | None:
        """What travels down besides the model (SCAFFOLD's control variate)."""
        return parameters

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        self.base.check_update(arrays, n_features)

    def replay_refusal(self) -> str | None:
        """Steps combine afresh each round unless the server keeps state (`persistent`)."""
        if self.persistent:
            return CARRIES_STATE
        if self.combine not in (mean, median):
            return (
                "--contributions scores coalitions down to a single province, which "
                "--aggregation krum, multi-krum and trimmed-mean cannot combine; use mean or median"
            )
        return None

    def fold(self, server_round, result, current):
        """Under the mean, each step is added into the round's running sum as it counts."""
        if not self.mean_of_steps or self.combine is not mean:
            return result
        self._folding.add(
            server_round, result.province, result.arrays, result.num_examples, current
        )
        return replace(result, arrays={})

    def aggregate_fit(
        self,
        server_round: int,
        results: list[ClientResult],
        failures: list[Failure],
        current: Arrays | None,
    ) -> Arrays | None:
        if not results:
            return None
        fold = self._folding.take(server_round, results)
        if fold is not None:
            return fold.applied(self.move(fold.mean_step()))
        like = self.model_part(results[0].arrays)
        reference = np.zeros(len(flatten(like))) if current is None else flatten(current)
        steps = np.stack([flatten(self.model_part(r.arrays)) - reference for r in results])
        weights = np.array([r.num_examples for r in results], dtype=np.float64)
        step = self.server_step(steps, weights, results, failures)
        return unflatten(reference + step, like)

    def model_part(self, arrays: Arrays) -> Arrays:
        return arrays

    def server_step(
        self,
        steps: np.ndarray,
        weights: np.ndarray,
        results: list[ClientResult],
        failures: list[Failure],
    ) -> np.ndarray:
        return self.move(self.combine(steps, weights))

    def move(self, step: np.ndarray) -> np.ndarray:
        """The server's move from the combined step: the step itself, or an optimiser's."""
        return step


def _metric(result: ClientResult, name: str) -> float:
    value = result.metrics.get(name)
    if value is None or value < 0:
        raise UpdateError(f"this strategy needs a non-negative {name!r} metric with each update")
    return float(value)


class FedNova(Federated):
    """Wang et al.: divide each step by its τ_i local steps, then scale by the mean τ.

    Provinces with more rows take more local steps and would otherwise pull the average
    towards their own optimum; normalising removes that objective inconsistency.
    """

    mean_of_steps = False  # each step divided by its own τ_i: not folded yet

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        if _metric(result, "local_steps") < 1:
            raise UpdateError("an update must report at least one local step")
        return result

    def server_step(self, steps, weights, results, failures):
        tau = np.array([r.metrics["local_steps"] for r in results])
        effective = weights @ tau / weights.sum()
        return effective * self.combine(steps / tau[:, None], weights)


class FedAvgM(Federated):
    """Hsu et al.: server momentum on the combined step, v ← βv + Δ, w ← w + η·v."""

    persistent = ("velocity",)

    def __init__(self, base, config=None, combine=mean, *, lr: float, momentum: float) -> None:
        super().__init__(base, config, combine)
        self.lr, self.momentum = lr, momentum
        self.velocity: np.ndarray | None = None

    def move(self, step):
        if self.velocity is None or self.velocity.shape != step.shape:
            self.velocity = np.zeros_like(step)
        self.velocity = self.momentum * self.velocity + step
        return self.lr * self.velocity


class FedAdam(Federated):
    """Reddi et al.: Adam on the pseudo-gradient −Δ, so each coordinate moves about η a round."""

    persistent = ("first", "second")

    def __init__(
        self,
        base,
        config=None,
        combine=mean,
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        tau: float = 1e-3,
    ) -> None:
        super().__init__(base, config, combine)
        self.lr, self.betas, self.tau = lr, betas, tau
        self.first: np.ndarray | None = None
        self.second: np.ndarray | None = None

    def move(self, step):
        if self.first is None or self.first.shape != step.shape:
            self.first, self.second = np.zeros_like(step), np.zeros_like(step)
        b1, b2 = self.betas
        self.first = b1 * self.first + (1 - b1) * step
        self.second = b2 * self.second + (1 - b2) * step**2
        return self.lr * self.first / (np.sqrt(self.second) + self.tau)


class Scaffold(Federated):
    """Karimireddy et al.: control variates correct each province's drift towards its own data.

    The server's variate c travels down as an extra tensor; each client keeps its own c_i and
    sends the change Δc_i up beside its weights. c moves by Σ Δc_i over all N clients.
    """

    persistent = ("control",)
    mean_of_steps = False  # the control variates travel beside the weights: not folded yet

    def __init__(self, base, config=None, combine=mean, *, lr: float = 1.0) -> None:
        super().__init__(base, {**(config or {}), "scaffold": True}, combine)
        self.lr = lr
        self.control: np.ndarray | None = None

    def downlink(self, parameters):
        if parameters is None:
            self.control = None
            return None  # round one: no global weights, so no variate to correct them with
        size = len(flatten(parameters))
        if self.control is None or len(self.control) != size:
            self.control = np.zeros(size)
        return {**parameters, CONTROL: self.control}

    def check_update(self, arrays, n_features):
        super().check_update(self.model_part(arrays), n_features)
        if self.control is None:
            if CONTROL_DELTA in arrays:
                raise UpdateError(f"unexpected tensor {CONTROL_DELTA!r} before any control variate")
            return
        change = arrays.get(CONTROL_DELTA)
        if change is None or change.shape != self.control.shape:
            raise UpdateError(f"expected tensor {CONTROL_DELTA!r} of shape {self.control.shape}")
        if change.dtype != np.float64 or not np.isfinite(change).all():
            raise UpdateError(f"tensor {CONTROL_DELTA!r} must be finite float64")

    def model_part(self, arrays):
        return {name: a for name, a in arrays.items() if name != CONTROL_DELTA}

    def server_step(self, steps, weights, results, failures):
        if self.control is not None:
            everyone = len(results) + len(failures)
            self.control = self.control + sum(r.arrays[CONTROL_DELTA] for r in results) / everyone
        return self.lr * self.combine(steps, weights)


class QFedAvg(Federated):
    """Li et al.'s q-FedAvg: provinces the global model serves badly weigh more, by F_i^q.

    F_i is the province's local objective under the global weights before it trains (the loss
    its steps minimise, not the MSE in yuan); L = 1/η, the inverse of the local learning rate.
    q = 0 is the unweighted mean of the steps.
    """

    mean_of_steps = False  # each step weighed by its own loss

    def __init__(self, base, config=None, combine=mean, *, q: float) -> None:
        super().__init__(base, config, combine)
        self.q = q
        self.lipschitz = 1.0 / LocalTraining.from_config(self.model_config).learning_rate

    def configure_fit(
        self, server_round: int, parameters: Arrays | None, provinces: list[str]
    ) -> list[Instruction]:
        """Each province is asked for its loss under the global model before it trains."""
        asked = super().configure_fit(server_round, parameters, provinces)
        return [replace(i, config={**i.config, **StartMetrics(True).to_config()}) for i in asked]

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        if server_round > 1:
            _metric(result, "start_loss")
        return result

    def server_step(self, steps, weights, results, failures):
        if any("start_loss" not in r.metrics for r in results):
            return self.combine(steps, weights)  # round one: no global model to be unfair yet
        loss = np.maximum([r.metrics["start_loss"] for r in results], 1e-12)
        moves = -self.lipschitz * steps  # Δw_i = L(w − w̄_i)
        scaled = loss[:, None] ** self.q * moves
        h = self.q * loss ** (self.q - 1) * np.sum(moves**2, axis=1) + self.lipschitz * loss**self.q
        return -scaled.sum(axis=0) / h.sum()
