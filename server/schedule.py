"""When a round happens: the schedule the round loop follows, and the synchronous one.

The loop (server/rounds.py) owns the run's state and its one path for uploads; a schedule
decides whom to ask when, and when the strategy aggregates. The synchronous schedule is a
cohort: every province trains from the same model, the round waits for all of them or its
deadline, and a quorum of results makes the next model. The asynchronous one, a buffer of K
arrivals weighted by staleness, is server/asynchronous.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from common.models.checks import UpdateError
from common.tensors import Arrays
from proto.fedstock.v1 import federation_pb2 as pb
from server.analysis import FinalFit
from server.strategy import ClientResult, Evaluation, Failure, Strategy

log = logging.getLogger("fedstock.server")

if TYPE_CHECKING:
    from server.rounds import RoundLoop


class Schedule(Protocol):
    def run(self, loop: RoundLoop, first_round: int) -> None:
        """Rounds `first_round` to the last, each recorded through `loop.recorder`."""
        ...


class Cohort:
    """Synchronous rounds: a cohort with a quorum (`--min-clients`) and a deadline."""

    def run(self, loop: RoundLoop, first_round: int) -> None:
        for server_round in range(first_round, loop.settings.rounds + 1):
            self.round(loop, server_round, loop.quorum(loop.settings.min_clients))

    @staticmethod
    def round(
        loop: RoundLoop,
        server_round: int,
        provinces: list[str],
        unrecorded: list[dict[str, Any]] | None = None,
    ) -> Evaluation | None:
        """Train, aggregate if the quorum answered, evaluate; recorded through the recorder, or
        (cross-validating) its record appended to `unrecorded` instead."""
        recorded = unrecorded is None
        s, strategy = loop.settings, loop.strategy
        started, cpu_started = time.perf_counter(), time.process_time()
        received: list[int] = []  # bytes of each update as it arrived, before any decoding
        fit = strategy.configure_fit(server_round, loop.parameters, provinces)
        accept = loop.accept_update(server_round, lambda r: received.append(nbytes(r.arrays)))
        keep = loop.keep_update(server_round)
        results, failures = loop.phase(server_round, pb.TASK_KIND_TRAIN, fit, accept, keep)
        overhead = time.perf_counter() - started - slowest(results)
        record: dict[str, Any] = {"round": server_round}
        # Members not asked, as not connected when the round began: the record says who sat
        # the round out, beside those whose task failed.
        record["absent"] = sorted(set(loop.channel.roster()) - set(provinces))
        if len(results) >= s.min_clients:
            if recorded and loop.analysis is not None and loop.analysis.settings.contributions:
                loop.final_fit = FinalFit(server_round, results, loop.parameters)
            if loop.aggregate(server_round, results, failures) is None:
                # The quorum answered but its updates made no model (under secure aggregation:
                # the sum could not be unmasked, the reason logged above): said in the record.
                record["aggregated"] = False
                log.warning(
                    "round %d: the updates could not be aggregated; the global model is unchanged",
                    server_round,
                )
        else:
            log.warning(
                "round %d: quorum not met (%d of %d); the global model is unchanged",
                server_round,
                len(results),
                s.min_clients,
            )
        trained = {r.province for r in results}
        left = [f for f in strategy.departures(server_round) if f.province in trained]
        record["clients"] = sorted(trained - {f.province for f in left})
        failures = [*failures, *left]
        evaluation = None
        sent = sum(nbytes(i.parameters) for i in fit)
        if loop.parameters is not None:
            phase_start = time.perf_counter()
            connected = loop.channel.connected()
            ask = strategy.configure_evaluate(server_round, loop.parameters, connected)
            sent += sum(nbytes(i.parameters) for i in ask)
            scores, eval_failures = loop.phase(
                server_round, pb.TASK_KIND_EVALUATE, ask, accept_evaluation(strategy)
            )
            overhead += time.perf_counter() - phase_start - slowest(scores)
            evaluation = loop.evaluate(strategy, server_round, scores, eval_failures)
            if evaluation is None and scores:
                record["evaluated"] = False  # scores came, but no total of them (as above)
            failures += eval_failures
        record.update(
            **scores_record(evaluation),
            train_mse=weighted_metric(results, "train_mse"),
            failures=failure_records(failures),
            seconds=time.perf_counter() - started,
            overhead_seconds=max(overhead, 0.0),
            # All of the server process's threads: transport, checks, aggregation, bookkeeping.
            server_cpu_seconds=time.process_time() - cpu_started,
            # Tensor bytes of the round's tasks to clients and of the updates accepted from them.
            bytes_down=sent,
            bytes_up=sum(received),
        )
        record["disclosure"] = strategy.round_disclosure(server_round, provinces, record["clients"])
        record.update(strategy.round_report(server_round))
        if recorded:
            updates = {r.province: r.digest for r in sorted(results, key=lambda r: r.province)}
            loop.recorder.commit(record, updates, loop.parameters, evaluation, loop.run_state())
        else:
            log.info("cross-validation %s", loop.round_line(record))
            unrecorded.append(record)
        return evaluation


def check_outcome(result: ClientResult) -> None:
    if result.num_examples <= 0:
        raise UpdateError("an outcome must report a positive number of examples")
    bad = [k for k, v in result.metrics.items() if not math.isfinite(v)]
    if bad:
        raise UpdateError(f"metrics {bad} are not finite")


def accept_evaluation(strategy: Strategy) -> Callable[[ClientResult], ClientResult]:
    """How `strategy`'s evaluations are taken: the outcome's checks, then the strategy's."""

    def accept(result: ClientResult) -> ClientResult:
        check_outcome(result)
        strategy.check_evaluation(result)
        return result

    return accept


def scores_record(evaluation: Evaluation | None) -> dict[str, Any]:
    """A round's (or a version's) record of its scores: none without an evaluation."""
    return {
        "mse": evaluation.mse if evaluation else None,
        "per_client": evaluation.per_client if evaluation else {},
    }


def failure_records(failures: list[Failure]) -> list[dict[str, str]]:
    """The failures as a round's (or a version's) record lists them."""
    return [{"province": f.province, "reason": f.reason} for f in failures]


def nbytes(arrays: Arrays | None) -> int:
    return sum(a.nbytes for a in (arrays or {}).values())


def slowest(results: list[ClientResult]) -> float:
    return max((r.metrics.get("seconds", 0.0) for r in results), default=0.0)


def weighted_metric(results: list[ClientResult], name: str) -> float | None:
    scored = [r for r in results if name in r.metrics]
    total = sum(r.num_examples for r in scored)
    if not total:
        return None
    return float(np.sum([r.metrics[name] * r.num_examples for r in scored]) / total)
