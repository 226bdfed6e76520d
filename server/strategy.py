"""How the federation learns: whom to ask, what to send, and how to combine what comes back.

The round loop owns time and transport; a strategy sees only provinces, arrays and metrics.
It is told about failures as well as results, so a strategy may weigh them (or ignore them).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from common.models import linear
from common.models.checks import UpdateError, check_arrays
from common.preprocess import GlobalStatistics
from common.scores import Evaluation
from common.settings import RoundNumber
from common.tensors import Arrays
from common.wire import ConfigScalar
from server.disclosure import IN_THE_CLEAR, Disclosure, contributors, entry
from server.folding import Folding


@dataclass(frozen=True)
class Instruction:
    """What one province is asked to do: its configuration and the parameters it starts from."""

    province: str
    config: Mapping[str, ConfigScalar]
    parameters: Arrays | None


@dataclass(frozen=True)
class ClientResult:
    province: str
    num_examples: int
    metrics: Mapping[str, float]
    arrays: Arrays = field(default_factory=dict)
    # SHA-256 of the update as received, for the ledger.
    digest: str = ""


@dataclass(frozen=True)
class Failure:
    province: str
    reason: str


# Why a strategy's aggregation cannot be replayed on coalitions, unless it says otherwise.
CARRIES_STATE = (
    "--contributions replays the final round's aggregation on each coalition's updates: "
    "it needs them in the clear (no --privacy) and an aggregation without state carried "
    "across rounds (not --strategy fedadam, fedavgm or scaffold)"
)

# The statistics phase's task kind (pb.TASK_KIND_STATISTICS), kept here free of the wire.
STATISTICS = 5


class PhaseRunner(Protocol):
    """Runs one phase of tasks: (round, task kind, instructions, accept[, keep]) -> (results,
    failures); `keep` is what the phase keeps of an accepted outcome once it counts."""

    def __call__(
        self,
        server_round: int,
        kind: int,
        instructions: list[Instruction],
        accept: Callable[[ClientResult], ClientResult],
        keep: Callable[[ClientResult], ClientResult] = ...,
        /,
    ) -> tuple[list[ClientResult], list[Failure]]: ...


class Strategy(ABC):
    """A federated learning algorithm, in the shape of Flower's strategy interface."""

    # Attributes holding arrays (or None) that the server learns over the rounds, such as
    # optimiser moments: checkpointed with the model, or a restart would silently reset them.
    persistent: tuple[str, ...] = ()

    def __init__(self, model_config: Mapping[str, ConfigScalar]) -> None:
        self.model_config = dict(model_config)

    def state(self) -> Arrays:
        """What a checkpoint must keep besides the model for the next round to go on as planned."""
        return {
            name: value for name in self.persistent if (value := getattr(self, name)) is not None
        }

    def restore(self, state: Arrays) -> None:
        """Take back what `state` returned before a restart; refuse another strategy's state."""
        foreign = sorted(set(state) - set(self.persistent))
        if foreign:
            raise ValueError(
                f"the checkpoint holds state {', '.join(foreign)} that {type(self).__name__} "
                "does not keep: was the server restarted with another --strategy?"
            )
        for name in self.persistent:
            setattr(self, name, state.get(name))

    def bind_phases(self, run: PhaseRunner) -> None:
        """Keep the round loop's phase runner, for strategies that need phases of their own."""
        self.run_phase = run

    def prepare(  # noqa: B027 - an optional hook
        self, statistics: GlobalStatistics, train_samples: Mapping[str, int]
    ) -> None:
        """Called once the federation's statistics are known, before the first round.

        `train_samples` are each province's training rows (a forest shares its trees by them).
        """

    def gather_statistics(
        self,
        provinces: list[str],
        shapes: Mapping[str, tuple[int, ...]],
        check: Callable[[ClientResult], None],
        plausible: Callable[[Arrays, int], None],
        config: Mapping[str, ConfigScalar] | None = None,
    ) -> tuple[list[ClientResult], list[Arrays]]:
        """A statistics phase (round 0): each province's answer, and the sums to add up (n, Σz
        and Σzzᵀ; with `config` asking for them, the day counts of the time split), of these
        `shapes`, each passed by `plausible` with its row count. Here each province's own, in
        the clear; a privacy mode replaces them with what it lets the server hold."""

        def accept(result: ClientResult) -> ClientResult:
            check(result)
            check_arrays(result.arrays, shapes)
            plausible(result.arrays, result.num_examples)
            return result

        plan = [Instruction(p, dict(config or {}), None) for p in provinces]
        results, _ = self.run_phase(0, STATISTICS, plan, accept)
        # In province order, not arrival order: the sums' last bits, and so a run, repeat.
        results = sorted(results, key=lambda r: r.province)
        return results, [r.arrays for r in results]

    def count_noise(self, clients: int) -> float:
        """The deviation of the noise on each count of the time split's sum over `clients`
        provinces (common/timesplit.py reads wider bins where it is large): none here."""
        return 0.0

    def configure_fit(
        self, server_round: int, parameters: Arrays | None, provinces: list[str]
    ) -> list[Instruction]:
        config = {**self.model_config, **RoundNumber(server_round).to_config()}
        return [Instruction(p, config, parameters) for p in provinces]

    @abstractmethod
    def check_update(self, arrays: Arrays, n_features: int) -> None:
        """Raise UpdateError unless `arrays` is a well-formed update for this strategy."""

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        """Called as each checked update arrives, on a handler thread: what to keep of it.

        A strategy whose updates are large folds the arrays into its running aggregate here
        and returns the result without them, so the server never holds every update at once.
        """
        return result

    def fold(self, server_round: int, result: ClientResult, current: Arrays | None) -> ClientResult:
        """Called once an accepted update is sure to count, `current` being the global model
        its round aggregates onto: what the round holds of it until `aggregate_fit`.

        A strategy whose aggregate is a weighted mean of the updates folds them into a running
        sum here (server/folding.py) and returns the result without its arrays; one that needs
        every update whole at the end (a robust rule, a privacy mode) keeps it, as here.
        """
        return result

    @abstractmethod
    def aggregate_fit(
        self,
        server_round: int,
        results: list[ClientResult],
        failures: list[Failure],
        current: Arrays | None,
    ) -> Arrays | None:
        """The new global parameters, or None to keep the current ones."""

    def configure_evaluate(
        self, server_round: int, parameters: Arrays, provinces: list[str]
    ) -> list[Instruction]:
        config = {**self.model_config, **RoundNumber(server_round).to_config()}
        return [Instruction(p, config, parameters) for p in provinces]

    def check_evaluation(self, result: ClientResult) -> None:
        """Raise UpdateError unless `result` is an evaluation as this strategy asks for it:
        here its metrics, a non-negative 'mse' among them, and no tensors."""
        if result.arrays:
            raise UpdateError("an evaluation carries metrics only, no tensors")
        if result.metrics.get("mse", -1.0) < 0:
            raise UpdateError("an evaluation must report a non-negative 'mse'")

    def aggregate_evaluate(
        self, server_round: int, results: list[ClientResult], failures: list[Failure]
    ) -> Evaluation | None:
        return Evaluation.weighted(results)

    def disclosure(self) -> Disclosure:
        """What each phase, as this strategy runs it, lets the server and the provinces learn."""
        return dict(IN_THE_CLEAR)

    def round_disclosure(self, server_round: int, asked: list[str], sent: list[str]) -> dict:
        """What the server and the provinces learned of round `server_round`'s updates, said by
        the schedule that gathered them: `asked` the provinces given the task, `sent` those
        whose update arrived. Here the run's `updates` entry, with who sent; a mode whose
        rounds differ (a province dropped, ε spent) says so in its own."""
        updates = self.disclosure()["updates"]
        server = f"{updates['server']}; from {contributors(asked, sent)}"
        return entry(server, updates["provinces"])

    def replay_refusal(self) -> str | None:
        """Why the analysis cannot replay this aggregation on any coalition's final-round
        updates; None where it can, the aggregation being a function of those updates alone."""
        return CARRIES_STATE

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Extra fields for the round's record in the results file (a privacy budget, say)."""
        return {}

    def departures(self, server_round: int) -> list[Failure]:
        """Provinces that left during the round's own later phases (a tree ensemble's
        questions) and were left out of what it aggregated: the round's record counts them
        failed, not trained."""
        return []


def checked_sums(
    results: list[ClientResult], sums: Arrays | None, plausible: Callable[[Arrays, int], None]
) -> tuple[list[ClientResult], list[Arrays]]:
    """A protected statistics phase's outcome: the answers, and the federation's `sums` alone,
    if they could be summed and pass `plausible` with the answers' row count."""
    if sums is None:
        return results, []
    try:
        plausible(sums, sum(r.num_examples for r in results))
    except UpdateError as error:
        logging.getLogger("fedstock.server").warning(
            "the federation's summed statistics fail their checks: %s", error
        )
        return results, []
    return results, [sums]


def weighted_average(results: list[ClientResult]) -> Arrays:
    """Each named array averaged over clients, weighted by their training samples."""
    total = sum(r.num_examples for r in results)
    if total <= 0:
        raise ValueError("cannot average updates that report no training samples")
    names = results[0].arrays.keys()
    return {
        name: np.asarray(sum(r.arrays[name] * (r.num_examples / total) for r in results))
        for name in names
    }


class FedAvg(Strategy):
    """McMahan et al.'s federated averaging: the sample-weighted mean of the clients' parameters."""

    def __init__(
        self,
        model_config: Mapping[str, ConfigScalar],
        check: Callable[[Arrays, int], None],
    ) -> None:
        super().__init__(model_config)
        self._check = check
        self._folding = Folding()

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        self._check(arrays, n_features)

    def fold(self, server_round, result, current):
        self._folding.add(server_round, result.province, result.arrays, result.num_examples, None)
        return replace(result, arrays={})

    def aggregate_fit(self, server_round, results, failures, current):
        if not results:
            return None
        fold = self._folding.take(server_round, results)
        return fold.mean() if fold is not None else weighted_average(results)

    def replay_refusal(self) -> str | None:
        return None


class ExactLinear(Strategy):
    """Least squares on the union of the data: sum every client's normal equations, solve once."""

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        linear.check_normal_equations(arrays, n_features)

    def aggregate_fit(self, server_round, results, failures, current):
        if not results:
            return None
        xtx = sum(r.arrays["xtx"] for r in results)
        xty = sum(r.arrays["xty"] for r in results)
        return linear.solve_normal_equations(xtx, xty)

    def replay_refusal(self) -> str | None:
        return None
