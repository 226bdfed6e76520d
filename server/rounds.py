"""The round loop, in one place: statistics once, then train and evaluate, round after round."""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.models.checks import UpdateError, check_arrays
from common.preprocess import TARGET, GlobalStatistics, features_for
from common.tensors import Arrays, Payload, from_tensor, to_tensor
from common.wire import ConfigScalar, to_config
from proto.fedstock.v1 import federation_pb2 as pb
from server.analysis import Analysis, FinalFit
from server.channel import Accept, Assignment, TaskChannel, gather
from server.checkpoint import Checkpoint
from server.checks import check_statistics, check_train_count
from server.config import RunSettings
from server.ledger import Ledger
from server.results import ResultsFile
from server.strategy import ClientResult, Evaluation, Failure, Instruction, Strategy

log = logging.getLogger("fedstock.server")


class FederationError(RuntimeError):
    """The federation cannot go on: too few clients, or no model came out of any round."""


def check_outcome(result: ClientResult) -> None:
    if result.num_examples <= 0:
        raise UpdateError("an outcome must report a positive number of examples")
    bad = [k for k, v in result.metrics.items() if not math.isfinite(v)]
    if bad:
        raise UpdateError(f"metrics {bad} are not finite")


def accept_evaluation(result: ClientResult) -> ClientResult:
    check_outcome(result)
    if result.arrays:
        raise UpdateError("an evaluation carries metrics only, no tensors")
    if result.metrics.get("mse", -1.0) < 0:
        raise UpdateError("an evaluation must report a non-negative 'mse'")
    return result


class RoundLoop:
    def __init__(
        self,
        channel: TaskChannel,
        strategy: Strategy,
        settings: RunSettings,
        results: ResultsFile,
        ledger: Ledger,
        checkpoint_path: Path,
        analysis: Analysis | None = None,
    ) -> None:
        self.channel = channel
        self.strategy = strategy
        self.settings = settings
        self.results = results
        self.ledger = ledger
        self.checkpoint_path = checkpoint_path
        self.analysis = analysis
        # The updates the global model was last aggregated from, kept for contributions.
        self.final_fit: FinalFit | None = None
        self.features = features_for(settings.setting)
        self.parameters: Arrays | None = None
        self.scaler: pb.Scaler | None = None
        self.statistics: GlobalStatistics | None = None
        self.train_samples: dict[str, int] = {}
        # Added to every task's config: the global numbers models need, and cross-validation's.
        self.task_config: dict[str, ConfigScalar] = {}
        strategy.bind_phases(self._phase)

    def run(self, select: Callable[[RoundLoop], Strategy] | None = None) -> None:
        """Statistics, then (with `select`) model selection picks the strategy, then the rounds."""
        s = self.settings
        first_round, seconds_before, evaluation = self._resume()
        if first_round == 1:
            self._statistics(self._quorum(s.min_available))
        if select is not None:
            self._adopt(select(self))
        started = time.perf_counter()
        for server_round in range(first_round, s.rounds + 1):
            evaluation, entry = self._round(server_round, self._quorum(s.min_clients))
            evaluation = evaluation or self._last_evaluation
            self._last_evaluation = evaluation
            self._complete(
                server_round,
                entry,
                seconds_before + time.perf_counter() - started,
                self.parameters,
            )
        self._finish(evaluation, seconds_before + time.perf_counter() - started)
        if self.analysis is not None:
            sections = self.analysis.run(
                self._phase,
                s.rounds + 1,
                self.strategy,
                self.parameters,
                self.final_fit,
                self.channel.connected(),
                self.features,
            )
            self.results.update(**sections)

    def _finish(self, evaluation: Evaluation | None, train_seconds: float) -> None:
        """Save the final model and its evaluation; the run needs no checkpoint any more."""
        if self.parameters is None or evaluation is None:
            raise FederationError("no round produced an evaluated model")
        model_file = self.results.path.with_name("model.npz")
        np.savez(model_file, **self.parameters)
        self.results.update(
            final={
                "mse": evaluation.mse,
                "clients": len(evaluation.per_client),
                "per_client": evaluation.per_client,
                "train_seconds": train_seconds,
                "model_file": model_file.name,
                "ledger_head": self.ledger.head,
            }
        )
        self.checkpoint_path.unlink(missing_ok=True)
        log.info(
            "done: final MSE %.6g over %d provinces, %.2f s of training",
            evaluation.mse,
            len(evaluation.per_client),
            train_seconds,
        )

    def _complete(
        self,
        server_round: int,
        entry: dict[str, Any],
        train_seconds: float,
        parameters: Arrays | None,
    ) -> None:
        """Make the round durable: checkpoint first (it carries the ledger entry), then ledger."""
        mean, scale = from_tensor(self.scaler.mean), from_tensor(self.scaler.scale)
        last = self._last_evaluation
        state = {
            "model": self.results.data["model"],
            "setting": self.settings.setting,
            "train_seconds": train_seconds,
            "results": self.results.data,
            "evaluation": {"mse": last.mse, "per_client": last.per_client} if last else None,
            "ledger_entry": entry,
        }
        Checkpoint(server_round, parameters or {}, mean, scale, state, self.strategy.state()).save(
            self.checkpoint_path
        )
        self.ledger.append(entry)

    def _resume(self) -> tuple[int, float, Evaluation | None]:
        """Pick up after the last completed round if a checkpoint of this run exists."""
        self._last_evaluation: Evaluation | None = None
        if not self.checkpoint_path.exists():
            return 1, 0.0, None
        checkpoint = Checkpoint.load(self.checkpoint_path)
        state = checkpoint.state
        wanted = (self.results.data["model"], self.settings.setting)
        if (state["model"], state["setting"]) != wanted:
            raise FederationError(
                f"{self.checkpoint_path} belongs to a run of model {state['model']} "
                f"({state['setting']}); remove it or choose another --results folder"
            )
        self.parameters = checkpoint.parameters or None
        try:
            self.strategy.restore(checkpoint.strategy_state)
        except ValueError as error:
            raise FederationError(f"{self.checkpoint_path}: {error}") from None
        self.scaler = pb.Scaler(
            features=self.features,
            mean=to_tensor("mean", checkpoint.scaler_mean),
            scale=to_tensor("scale", checkpoint.scaler_scale),
        )
        self.results.update(**{k: v for k, v in state["results"].items() if k != "config"})
        if state["evaluation"]:
            self._last_evaluation = Evaluation(**state["evaluation"])
        if self.ledger.last_round < checkpoint.server_round:
            self.ledger.append(state["ledger_entry"])
        record = self.results.data["statistics"]
        self._use_statistics(statistics_from_record(record), record["train_samples"])
        log.warning(
            "resuming after round %d from %s", checkpoint.server_round, self.checkpoint_path
        )
        return checkpoint.server_round + 1, state["train_seconds"], self._last_evaluation

    def _quorum(self, count: int) -> list[str]:
        s = self.settings
        provinces = self.channel.wait_for_clients(count, s.join_timeout)
        if len(provinces) < count:
            raise FederationError(
                f"only {len(provinces)} of the {count} required clients are connected "
                f"after {s.join_timeout:g} s: {', '.join(provinces) or 'none'}"
            )
        return provinces

    def _statistics(self, provinces: list[str]) -> None:
        size = len(self.features) + 1
        shapes = {"count": (), "sum": (size,), "cross": (size, size)}

        def accept(result: ClientResult) -> ClientResult:
            check_outcome(result)
            check_arrays(result.arrays, shapes)
            check_statistics(result.arrays, result.num_examples, [*self.features, TARGET])
            return result

        instructions = [Instruction(p, {}, None) for p in provinces]
        results, _ = self._phase(0, pb.TASK_KIND_STATISTICS, instructions, accept)
        if len(results) < self.settings.min_clients:
            raise FederationError(f"only {len(results)} clients sent their statistics")
        stats = GlobalStatistics.from_sums([*self.features, TARGET], [r.arrays for r in results])
        mean, scale = stats.scaler()
        self.scaler = pb.Scaler(
            features=self.features, mean=to_tensor("mean", mean), scale=to_tensor("scale", scale)
        )
        train_samples = {r.province: r.num_examples for r in results}
        self.results.update(
            statistics={
                "rows": stats.count,
                "columns": stats.columns,
                "mean": stats.mean.tolist(),
                "std": stats.std.tolist(),
                "pearson": stats.correlation.round(6).tolist(),
                "train_samples": train_samples,
            },
            task_context=task_context(stats),
        )
        self._use_statistics(stats, train_samples)
        log.info(
            "global statistics from %d provinces over %d training rows", len(results), stats.count
        )

    def _use_statistics(self, stats: GlobalStatistics, train_samples: dict[str, int]) -> None:
        self.statistics, self.train_samples = stats, train_samples
        self.task_config = dict(self.results.data["task_context"])
        self.strategy.prepare(stats, train_samples)

    def _adopt(self, strategy: Strategy) -> None:
        strategy.bind_phases(self._phase)
        strategy.prepare(self.statistics, self.train_samples)
        self.strategy = strategy

    def fit(self, strategy: Strategy, config: dict[str, ConfigScalar]) -> Evaluation | None:
        """Train `strategy` from scratch with `config` added to every task, and its last
        evaluation. Model selection's inner runs: nothing enters the results' rounds, the
        checkpoint or the ledger, and the run's own strategy and model are left as they were."""
        saved = self.strategy, self.parameters, self.task_config
        self._adopt(strategy)
        self.parameters, self.task_config = None, {**self.task_config, **config}
        try:
            evaluation = None
            for server_round in range(1, self.settings.rounds + 1):
                provinces = self._quorum(self.settings.min_clients)
                evaluation = self._round(server_round, provinces, recorded=False)[0] or evaluation
            return evaluation
        finally:
            self.strategy, self.parameters, self.task_config = saved

    def _round(
        self, server_round: int, provinces: list[str], recorded: bool = True
    ) -> tuple[Evaluation | None, dict[str, Any]]:
        s, strategy = self.settings, self.strategy
        started, cpu_started = time.perf_counter(), time.process_time()
        record: dict[str, Any] = {"round": server_round}
        received: list[int] = []

        def accept_fit(result: ClientResult) -> ClientResult:
            check_outcome(result)
            check_train_count(result.num_examples, self.train_samples.get(result.province))
            strategy.check_update(result.arrays, len(self.features))
            received.append(_nbytes(result.arrays))
            return strategy.accept_fit(server_round, result)

        fit = strategy.configure_fit(server_round, self.parameters, provinces)
        results, failures = self._phase(server_round, pb.TASK_KIND_TRAIN, fit, accept_fit)
        overhead = time.perf_counter() - started - _slowest(results)
        record["clients"] = sorted(r.province for r in results)
        if len(results) >= s.min_clients:
            if recorded and self.analysis is not None and self.analysis.settings.contributions:
                self.final_fit = FinalFit(server_round, results, self.parameters)
            aggregated = strategy.aggregate_fit(server_round, results, failures, self.parameters)
            self.parameters = aggregated if aggregated is not None else self.parameters
        else:
            log.warning(
                "round %d: quorum not met (%d of %d); the global model is unchanged",
                server_round,
                len(results),
                s.min_clients,
            )
        evaluation = None
        sent = sum(_nbytes(i.parameters) for i in fit)
        if self.parameters is not None:
            phase_start = time.perf_counter()
            ask = strategy.configure_evaluate(
                server_round, self.parameters, self.channel.connected()
            )
            sent += sum(_nbytes(i.parameters) for i in ask)
            scores, eval_failures = self._phase(
                server_round, pb.TASK_KIND_EVALUATE, ask, accept_evaluation
            )
            overhead += time.perf_counter() - phase_start - _slowest(scores)
            evaluation = strategy.aggregate_evaluate(server_round, scores, eval_failures)
            failures += eval_failures
        record.update(
            mse=evaluation.mse if evaluation else None,
            train_mse=_weighted_metric(results, "train_mse"),
            per_client=evaluation.per_client if evaluation else {},
            failures=[{"province": f.province, "reason": f.reason} for f in failures],
            seconds=time.perf_counter() - started,
            overhead_seconds=max(overhead, 0.0),
            # All of the server process's threads: transport, checks, aggregation, bookkeeping.
            server_cpu_seconds=time.process_time() - cpu_started,
            # Tensor bytes of the round's tasks to clients and of the updates accepted from them.
            bytes_down=sent,
            bytes_up=sum(received),
        )
        record.update(strategy.round_report(server_round))
        if recorded:
            self.results.add_round(record)
        log.info(("" if recorded else "cross-validation ") + _round_line(record, s.rounds))
        entry = {
            "round": server_round,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model_digest": Payload.encode(self.parameters).digest() if self.parameters else None,
            "participants": record["clients"],
            "updates": {r.province: r.digest for r in sorted(results, key=lambda r: r.province)},
            "metrics": {"mse": record["mse"], "per_client": record["per_client"]},
            "failures": record["failures"],
        }
        return evaluation, entry

    def _phase(
        self,
        server_round: int,
        kind: int,
        instructions: list[Instruction],
        accept: Accept,
    ) -> tuple[list[ClientResult], list[Failure]]:
        return gather(
            self.channel,
            server_round,
            kind,
            self._assignments(server_round, kind, instructions),
            accept,
            self.settings.round_timeout,
        )

    def _assignments(
        self, server_round: int, kind: int, instructions: list[Instruction]
    ) -> dict[str, Assignment]:
        """Each province's task, its parameters encoded once however many share them."""
        payloads: dict[int, Payload] = {}
        assignments: dict[str, Assignment] = {}
        for instruction in instructions:
            payload = None
            if instruction.parameters is not None:
                key = id(instruction.parameters)
                if key not in payloads:
                    payloads[key] = Payload.encode(instruction.parameters)
                payload = payloads[key]
            task = pb.Task(
                round=server_round,
                kind=kind,
                config=to_config(
                    {**self.settings.data_config(), **self.task_config, **instruction.config}
                ),
                scaler=self.scaler,
                parameters=payload.header if payload else None,
            )
            assignments[instruction.province] = Assignment(task, payload)
        return assignments


def statistics_from_record(record: dict[str, Any]) -> GlobalStatistics:
    """The global statistics as the results file keeps them (correlations to 6 decimals)."""
    return GlobalStatistics(
        record["columns"],
        record["rows"],
        np.asarray(record["mean"]),
        np.asarray(record["std"]),
        np.asarray(record["pearson"]),
    )


def task_context(stats: GlobalStatistics) -> dict[str, ConfigScalar]:
    """The global numbers every task carries, for the models that need them: training rows N,
    today's close as scaled, the mean and deviation of the target and of its change from the
    close (models learn them standardised), and the variance of the scaled features over all
    entries (gamma='scale'; the scaled features' means are all 0)."""
    mean, scale = stats.scaler()
    close, target = stats.columns.index("close"), len(stats.columns) - 1
    std = stats.std
    change_variance = (
        std[target] ** 2
        + std[close] ** 2
        - 2 * stats.correlation[target, close] * std[target] * std[close]
    )
    return {
        "train_rows": stats.count,
        "close_mean": float(mean[close]),
        "close_scale": float(scale[close]),
        "target_mean": float(stats.mean[target]),
        "target_std": float(std[target]) or 1.0,
        "change_mean": float(stats.mean[target] - stats.mean[close]),
        "change_std": float(np.sqrt(max(change_variance, 0.0))) or 1.0,
        "feature_variance": float(np.mean((std[:-1] / scale) ** 2)),
    }


def _nbytes(arrays: Arrays | None) -> int:
    return sum(a.nbytes for a in (arrays or {}).values())


def _slowest(results: list[ClientResult]) -> float:
    return max((r.metrics.get("seconds", 0.0) for r in results), default=0.0)


def _weighted_metric(results: list[ClientResult], name: str) -> float | None:
    scored = [r for r in results if name in r.metrics]
    total = sum(r.num_examples for r in scored)
    if not total:
        return None
    return float(np.sum([r.metrics[name] * r.num_examples for r in scored]) / total)


def _round_line(record: dict[str, Any], rounds: int) -> str:
    mse = "n/a" if record["mse"] is None else f"{record['mse']:.6g}"
    dropped = (
        f", dropped: {', '.join(f['province'] for f in record['failures'])}"
        if record["failures"]
        else ""
    )
    return (
        f"round {record['round']}/{rounds}: {len(record['clients'])} clients trained, "
        f"global MSE {mse}, {record['seconds']:.3f} s "
        f"(server overhead {record['overhead_seconds'] * 1000:.1f} ms){dropped}"
    )
