"""What makes a round durable and visible, written once for every schedule: its record in the
results, its ledger entry, the checkpoint a restarted server resumes from, and its log line.

A round costs one flush to disk, the checkpoint's, whatever the run's length. In order:

1. the round's record is appended to the rounds log (server/results.py), not flushed;
2. its ledger entry is signed, and the checkpoint is written and flushed carrying it and every
   earlier entry the ledger file has not yet flushed, with the results' fields but not their
   rounds (so it does not grow with the run);
3. the entry is written to the ledger, flushed by a thread of its own, and its receipt goes
   out to the provinces.

A server killed before 2 has its checkpoint at the round before: the resume takes the rounds
log up to that round and does this one again. Killed after 2, it resumes after this round and
writes back whatever entries its checkpoint carries that the ledger lacks, so the ledger never
misses a recorded round and no receipt names an entry a crash can take from it. After a crash
of the machine the rounds log may lack its last rounds (it is not flushed): the resume says
which, and the results go on without them; the checkpoint and ledger lose nothing.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import forecast, quantity
from common.tensors import Arrays, Payload
from server.checkpoint import Checkpoint
from server.ledger import Ledger
from server.results import ResultsFile, read_rounds, rounds_log
from server.strategy import Evaluation

log = logging.getLogger("fedstock.server")


class ResumeError(RuntimeError):
    """A checkpoint this run cannot resume from; the message says what to do."""


@dataclass(frozen=True)
class RunState:
    """Besides the model, what a restarted run needs to go on as it would have."""

    train_seconds: float
    scaler: tuple[np.ndarray, np.ndarray]
    strategy_state: Arrays


@dataclass(frozen=True)
class Resumed:
    """Where an interrupted run stood after its last recorded round, as its checkpoint says."""

    server_round: int
    parameters: Arrays | None
    scaler: tuple[np.ndarray, np.ndarray]
    strategy_state: Arrays
    train_seconds: float
    results: dict[str, Any]  # the results as recorded at that round
    evaluation: Evaluation | None
    # Signed entries the ledger may have lost (checkpoints written before the rounds log carry
    # one unsigned `ledger_entry` instead, appended as a new entry).
    ledger_entries: list[dict[str, Any]]
    ledger_entry: dict[str, Any] | None


def read_checkpoint(
    path: Path, model: str, setting: str, forecasting: str = quantity.DEFAULT
) -> Resumed | None:
    """The state a restart of a run of `model` in `setting`, forecasting `forecasting`, resumes
    from, if `path` holds one; read and checked only, so a checkpoint that is refused has
    changed nothing. A checkpoint written before --forecast existed forecast the price."""
    if not path.exists():
        return None
    try:
        checkpoint = Checkpoint.load(path)
        state = checkpoint.state
        recorded_run = (state["model"], state["setting"], state.get("forecast", quantity.DEFAULT))
        if recorded_run != (model, setting, forecasting):
            raise ResumeError(
                f"{path} belongs to a run of model {recorded_run[0]} ({recorded_run[1]}, "
                f"forecast {recorded_run[2]}); remove it or choose another --results folder"
            )
        recorded = json.loads(checkpoint.results) if checkpoint.results else state["results"]
        if "rounds" not in recorded:
            recorded["rounds"] = read_rounds(rounds_log(path), checkpoint.server_round)
            last = recorded["rounds"][-1]["round"] if recorded["rounds"] else 0
            if last < checkpoint.server_round:
                log.warning(
                    "%s ends at round %d, the checkpoint at round %d: the results lack the "
                    "rounds between (lost with the log's unflushed end)",
                    rounds_log(path),
                    last,
                    checkpoint.server_round,
                )
        evaluation = state["evaluation"]
        resumed = Resumed(
            checkpoint.server_round,
            checkpoint.parameters or None,
            (checkpoint.scaler_mean, checkpoint.scaler_scale),
            checkpoint.strategy_state,
            state["train_seconds"],
            recorded,
            Evaluation(**evaluation) if evaluation else None,
            state.get("ledger_entries", []),
            state.get("ledger_entry"),
        )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise ResumeError(
            f"{path} cannot be read as a checkpoint ({type(error).__name__}: {error}); "
            "remove it or choose another --results folder"
        ) from None
    return resumed


class Recorder:
    def __init__(
        self,
        results: ResultsFile,
        ledger: Ledger,
        checkpoint_path: Path,
        setting: str,
        rounds: int,
        forecasting: str = quantity.DEFAULT,
    ) -> None:
        self.results, self.ledger = results, ledger
        self.checkpoint_path, self.setting, self.rounds = checkpoint_path, setting, rounds
        self.forecasting = forecasting
        # The newest evaluation recorded: what the final result reports.
        self.last_evaluation: Evaluation | None = None
        # When the last round's recording began: a round's `interval_seconds` runs from there.
        self._last_commit: float | None = None

    def resume(self, resumed: Resumed) -> None:
        """Go on from `resumed`: its results recorded again, the ledger entries its checkpoint
        carries written back if the ledger lost them."""
        self.results.update(**{k: v for k, v in resumed.results.items() if k != "config"})
        self.last_evaluation = resumed.evaluation
        self.ledger.restore(resumed.ledger_entries)
        if resumed.ledger_entry is not None and self.ledger.last_round < resumed.server_round:
            self.ledger.append(resumed.ledger_entry)
        log.warning("resuming after round %d from %s", resumed.server_round, self.checkpoint_path)

    def commit(
        self,
        record: dict[str, Any],
        updates: Any,
        parameters: Arrays | None,
        evaluation: Evaluation | None,
        run: RunState,
    ) -> None:
        """Record one round: results, log line, checkpoint (with its ledger entry), ledger.

        `updates` names what the model was made of, as the schedule knows it: each province's
        update digest (synchronous), or each update with its staleness (asynchronous)."""
        now = time.perf_counter()
        # From the end of the last round to the end of this one, its recording included: the
        # span another framework's round-end-to-round-end time covers.
        record["interval_seconds"] = None if self._last_commit is None else now - self._last_commit
        self._last_commit = now
        self.last_evaluation = evaluation or self.last_evaluation
        self.results.add_round(record)
        log.info(round_line(record, self.rounds))
        entry = {
            "round": record["round"],
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model_digest": Payload.encode(parameters).digest() if parameters else None,
            "participants": record["clients"],
            "updates": updates,
            "metrics": {"mse": record["mse"], "per_client": record["per_client"]},
            "failures": record["failures"],
            "absent": record.get("absent", []),
        }
        last = self.last_evaluation
        state = {
            "model": self.results.data["model"],
            "setting": self.setting,
            "forecast": self.forecasting,
            "train_seconds": run.train_seconds,
            "evaluation": {"mse": last.mse, "per_client": last.per_client} if last else None,
        }
        signed = self.ledger.sign(entry)
        state["ledger_entries"] = [*self.ledger.unflushed, signed]
        checkpoint = Checkpoint(
            record["round"],
            parameters or {},
            *run.scaler,
            state,
            run.strategy_state,
            self.results.head,
        )
        checkpoint.save(self.checkpoint_path)
        self.ledger.write(signed, flushed=False)

    def finish(self, parameters: Arrays | None, train_seconds: float) -> bool:
        """Save the final model and its evaluation (False if there is none to save); the run
        needs no checkpoint any more."""
        evaluation = self.last_evaluation
        if parameters is None or evaluation is None:
            return False
        model_file = self.results.path.with_name("model.npz")
        np.savez(model_file, **parameters)
        self.results.update(
            final={
                **evaluation.pooled(),
                "mse": evaluation.mse,
                "clients": len(evaluation.per_client),
                "per_client": evaluation.per_client,
                "train_seconds": train_seconds,
                "model_file": model_file.name,
                "ledger_head": self.ledger.head,
            }
        )
        # The checkpoint carries the entries the ledger has not flushed: flushed first.
        self.ledger.close()
        self.checkpoint_path.unlink(missing_ok=True)
        log.info(
            "done: final MSE %.6g over %d provinces, %.2f s of training",
            evaluation.mse,
            len(evaluation.per_client),
            train_seconds,
        )
        if verdict := forecast.verdict(self.results.data["final"]):
            log.info("%s", verdict)
        return True


def round_line(record: dict[str, Any], rounds: int) -> str:
    """One round as the log shows it; an asynchronous one also names staleness and scorers."""
    mse = "n/a" if record["mse"] is None else f"{record['mse']:.6g}"
    staleness = (
        f" (staleness {','.join(str(u['staleness']) for u in record['updates'])})"
        if "updates" in record
        else ""
    )
    scored = (
        f" scored by {len(record['evaluated_by'])} provinces" if "evaluated_by" in record else ""
    )
    dropped = (
        f", dropped: {', '.join(f['province'] for f in record['failures'])}"
        if record["failures"]
        else ""
    )
    absent = record.get("absent", [])
    named = [*absent[:12], *([f"{len(absent) - 12} more"] if absent[12:] else [])]
    away = f", absent: {', '.join(named)}" if absent else ""
    unchanged = "" if record.get("aggregated", True) else " (not aggregated: model unchanged)"
    unscored = "" if record.get("evaluated", True) else " (scores not aggregated)"
    return (
        f"round {record['round']}/{rounds}: {len(record['clients'])} clients trained{staleness}"
        f"{unchanged}, "
        f"global MSE {mse}{unscored}{scored}, {record['seconds']:.3f} s "
        f"(server overhead {record['overhead_seconds'] * 1000:.1f} ms){dropped}{away}"
    )
