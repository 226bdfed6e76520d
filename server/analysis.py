"""The end-of-run analysis: what each province is worth, why the model predicts, personalisation.

After the last round, when asked, the server runs ONE extra phase (TASK_KIND_ANALYSE) in which
every province, sent the global model and nothing else, answers on its own test rows: for
contributions, the sums from which the server scores any coalition's model itself
(common/analysis.py; a coalition's model is the aggregate the strategy builds from its updates
of the final round); the global model's MSE with each feature's column permuted (importance);
and that of the global model fine-tuned on its training rows (personalisation). No province
ever receives a coalition's model: a single province's, or two that differ by one province,
would hand it that province's update. The server combines the MSEs sample-weighted over all
test rows, as federated evaluation does, and writes a section of the results for each.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from common import analysis, vectors
from common.model_settings import ModelTask
from common.models.checks import UpdateError
from common.registry import model_spec
from common.tensors import Arrays
from proto.fedstock.v1 import federation_pb2 as pb
from server import contributions
from server.config import AnalysisRequest
from server.disclosure import entry
from server.strategy import ClientResult, PhaseRunner, Strategy

log = logging.getLogger("fedstock.server")

BASELINE = "the empty coalition predicts the federation's training mean of the target"
UNREPLAYED = (
    "the updates of the final round are not at hand: the server restarted after it "
    "(contributions need a run whose last round this server process aggregated)"
)


@dataclass(frozen=True)
class AnalysisSettings:
    contributions: bool
    permutations: int
    importance_repeats: int  # 0: no importance
    personalise_epochs: int  # 0: no personalisation
    personalise_pull: float
    seed: int

    @classmethod
    def asked(cls, request: AnalysisRequest, seed: int) -> AnalysisSettings | None:
        """The analysis `request` asks for, or None when it asks for none."""
        if not request.wanted:
            return None
        return cls(
            request.contributions,
            request.shapley_permutations,
            request.importance_repeats if request.importance else 0,
            request.personalise_epochs if request.personalise else 0,
            request.personalise_pull,
            seed,
        )

    def ask(self, score_sums: bool) -> analysis.AnalysisAsk:
        """What the analysis task asks each province for."""
        return analysis.AnalysisAsk(
            analysis_seed=self.seed,
            personalise_pull=self.personalise_pull,
            analysis_score_sums=int(score_sums),
            importance_repeats=self.importance_repeats,
            personalise_epochs=self.personalise_epochs,
        )


def check_supported(settings: AnalysisSettings, strategy: Strategy) -> None:
    """Raise ValueError, saying why, if the strategy's model cannot be analysed as asked."""
    refusal = strategy.replay_refusal() if settings.contributions else None
    if refusal:
        raise ValueError(refusal)


@dataclass(frozen=True)
class FinalFit:
    """The updates the global model was last aggregated from, and the model they started from."""

    server_round: int
    updates: list[ClientResult]
    start: Arrays | None


class Analysis:
    def __init__(self, settings: AnalysisSettings) -> None:
        self.settings = settings

    def disclosure(self) -> dict[str, str]:
        """What the analysis phase, as `run` sends and accepts it, lets each side learn."""
        s = self.settings
        scored = ["of the global model"]
        scored += ["with each feature's column permuted"] if s.importance_repeats else []
        scored += ["fine-tuned on its own rows"] if s.personalise_epochs else []
        server = f"each province's test MSEs ({', '.join(scored)}) and test rows, in the clear"
        if s.contributions:
            server += (
                "; for contributions, its test rows' sums ΦᵀΦ, Φᵀr and rᵀr (r: the global "
                "model's residuals; Φ: how its predictions move with each parameter), in the "
                "clear, from which the server scores every coalition's model itself"
            )
        return entry(server, "the global model only: no coalition's model, no other update")

    def run(
        self,
        run_phase: PhaseRunner,
        server_round: int,
        strategy: Strategy,
        model: Arrays,
        final_fit: FinalFit | None,
        provinces: list[str],
        features: list[str],
    ) -> dict[str, Any]:
        """The results' sections: `contributions`, `importance`, `personalisation` as asked."""
        started = time.perf_counter()
        s = self.settings
        plan = self._plan(strategy, model, final_fit) if s.contributions else None
        config = s.ask(plan is not None).to_config()
        expected = self._expected(features)
        size = plan.steps.shape[1] if plan else 0
        instructions = [
            replace(ask, config={**ask.config, **config})
            for ask in strategy.configure_evaluate(server_round, model, provinces)
        ]
        results, failures = run_phase(
            server_round, pb.TASK_KIND_ANALYSE, instructions, lambda r: accept(r, expected, size)
        )
        seconds = time.perf_counter() - started
        if not results:
            reason = "; ".join(f"{f.province}: {f.reason}" for f in failures) or "no province"
            log.error("analysis: no province answered (%s)", reason)
            return {"analysis": {"error": f"no province answered the analysis: {reason}"}}
        sections: dict[str, Any] = {
            "analysis": {
                "seconds": seconds,
                "provinces": sorted(r.province for r in results),
                # Each province's own time for its part, as it reported it.
                "client_seconds": {r.province: r.metrics.get("seconds") for r in results},
                "failures": [{"province": f.province, "reason": f.reason} for f in failures],
            }
        }
        if plan:
            sections["contributions"] = plan.report(results, s)
        elif s.contributions:
            sections["contributions"] = {"error": UNREPLAYED}
        if s.importance_repeats:
            sections["importance"] = importance(results, features, s.importance_repeats)
        if s.personalise_epochs:
            sections["personalisation"] = personalisation(
                results, s, ModelTask.from_config(strategy.model_config).model
            )
        log.info("analysis done in %.2f s over %d provinces", seconds, len(results))
        return sections

    def _plan(
        self, strategy: Strategy, model: Arrays, final_fit: FinalFit | None
    ) -> CoalitionPlan | None:
        if final_fit is None:
            log.error("contributions: %s", UNREPLAYED)
            return None
        model_name = ModelTask.from_config(strategy.model_config).model
        ensemble = model_spec(model_name).members is not None
        # The members each province has in the global ensemble, in the order they are packed.
        members = strategy.round_report(final_fit.server_round)["members"] if ensemble else {}
        players = sorted(u.province for u in final_fit.updates if members.get(u.province, 1))
        s = self.settings
        orders = contributions.random_orders(players, s.permutations, s.seed)
        needed = [c for c in contributions.coalitions(players, orders) if c]
        if ensemble:  # a coalition's ensemble: the mean of its members
            owners = np.array([p for p, count in members.items() for _ in range(count)])
            marks = [np.isin(owners, sorted(c)).astype(np.float64) for c in needed]
            weights = [mark / mark.sum() for mark in marks]
            start = np.full(len(owners), 1.0 / len(owners))
        else:
            weights = [
                vectors.flatten(
                    strategy.aggregate_fit(
                        final_fit.server_round,
                        [u for u in final_fit.updates if u.province in coalition],
                        [],
                        final_fit.start,
                    )
                )
                for coalition in needed
            ]
            start = vectors.flatten(model)
        steps = np.array(weights) - start
        return CoalitionPlan(final_fit.server_round, players, orders, needed, steps)

    def _expected(self, features: list[str]) -> list[str]:
        """The metrics every answer must carry."""
        s = self.settings
        names = [analysis.GLOBAL_MSE, analysis.MEAN_MSE]
        names += [
            analysis.permuted_metric(f, r) for f in features for r in range(s.importance_repeats)
        ]
        return names + ([analysis.PERSONAL_MSE] if s.personalise_epochs else [])


def accept(result: ClientResult, expected: Sequence[str], size: int = 0) -> ClientResult:
    """An answer with every expected MSE, each finite and non-negative, and no tensors but,
    for contributions, the test rows' sums for `size` parameters."""
    if result.num_examples <= 0:
        raise UpdateError("an analysis must report a positive number of test rows")
    if size:
        analysis.check_score_sums(result.arrays, size)
    elif result.arrays:
        raise UpdateError("an analysis carries metrics only, no tensors")
    missing = [name for name in expected if name not in result.metrics]
    if missing:
        raise UpdateError(f"the analysis lacks {len(missing)} metrics, e.g. {missing[:3]}")
    bad = [name for name in expected if not 0 <= result.metrics[name] < math.inf]
    if bad:
        raise UpdateError(f"metrics {bad[:3]} are not finite non-negative MSEs")
    return result


def weighted(results: list[ClientResult], name: str) -> float:
    """A metric over every answering province's test rows, as federated evaluation weighs it."""
    total = sum(r.num_examples for r in results)
    return float(sum(r.metrics[name] * r.num_examples for r in results) / total)


@dataclass(frozen=True)
class CoalitionPlan:
    server_round: int
    players: list[str]
    orders: list[list[contributions.Order]]  # sets of rotations
    coalitions: list[contributions.Coalition]  # non-empty
    steps: np.ndarray  # row k: coalition k's model θ minus the global model's (common/analysis)

    def report(self, results: list[ClientResult], settings: AnalysisSettings) -> dict[str, Any]:
        """Utility v(S) = −MSE(S): positive values help, and Shapley sums to v(all) − v(∅).

        Each coalition's MSE over every answering province's test rows, from their summed
        sums: the server scores the coalitions' models, which never leave it."""
        sums = {name: sum(r.arrays[name] for r in results) for name in results[0].arrays}
        rows = sum(r.num_examples for r in results)
        value = {
            coalition: -analysis.squared_error(sums, step) / rows
            for coalition, step in zip(self.coalitions, self.steps, strict=True)
        }
        value[frozenset()] = -weighted(results, analysis.MEAN_MSE)
        shapley, errors = contributions.shapley(self.players, self.orders, value)
        return {
            "utility": "minus the global test MSE of the model aggregated from the coalition's "
            f"updates of round {self.server_round}",
            "baseline": BASELINE,
            "round": self.server_round,
            "mse_all": -value[frozenset(self.players)],
            "mse_empty": -value[frozenset()],
            "permutations": sum(len(rotations) for rotations in self.orders),
            "seed": settings.seed,
            "coalitions": len(self.coalitions) + 1,
            "leave_one_out": contributions.leave_one_out(self.players, value),
            "shapley": shapley,
            "shapley_std_error": errors,
        }


def importance(results: list[ClientResult], features: list[str], repeats: int) -> dict[str, Any]:
    """Per feature, the rise in global test MSE when its column is shuffled, over the repeats."""
    base = weighted(results, analysis.GLOBAL_MSE)
    scores = {}
    for feature in features:
        permuted = [weighted(results, analysis.permuted_metric(feature, r)) for r in range(repeats)]
        rise = np.array(permuted) - base
        scores[feature] = {
            "importance": float(rise.mean()),
            "std": float(rise.std(ddof=1)) if repeats > 1 else 0.0,
            "permuted_mse": permuted,
        }
    ranked = dict(sorted(scores.items(), key=lambda item: -item[1]["importance"]))
    return {"base_mse": base, "repeats": repeats, "features": ranked}


def personalisation(
    results: list[ClientResult], settings: AnalysisSettings, model: str
) -> dict[str, Any]:
    """Each province's test MSE under the global model and under its own fine-tuned copy."""
    per_client = {
        r.province: {
            "n_test": r.num_examples,
            "global_mse": r.metrics[analysis.GLOBAL_MSE],
            "personal_mse": r.metrics[analysis.PERSONAL_MSE],
        }
        for r in sorted(results, key=lambda r: r.province)
    }
    return {
        "method": model_spec(model).fine_tuning.format(
            epochs=settings.personalise_epochs, pull=settings.personalise_pull
        ),
        "global_mse": weighted(results, analysis.GLOBAL_MSE),
        "personal_mse": weighted(results, analysis.PERSONAL_MSE),
        "per_client": per_client,
    }
