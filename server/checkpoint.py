"""The server's state after each completed round, written atomically, so a restart resumes.

A checkpoint is a NumPy .npz of plain arrays (global parameters, scaler and the strategy's own
state, such as optimiser moments) plus the run's state as JSON bytes; it is loaded with pickling
disabled. Of the run's results it carries every field but the rounds, as JSON bytes the results
file encoded once (the rounds are in the rounds log beside it, server/results.py), so its size
does not grow with the run. It is written after a round has been
aggregated, evaluated and recorded, so on restart the next round is exactly the first one that
did not complete: none is lost, none applied twice.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.tensors import Arrays

_PARAMETER = "parameter/"
_STRATEGY = "strategy/"


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    parameters: Arrays
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    state: dict[str, Any]
    strategy_state: Arrays = field(default_factory=dict)
    # The results' fields but the rounds, at this round. Checkpoints written before the rounds
    # log carry the whole results here, rounds included, or inside `state`.
    results: bytes = b""

    def save(self, path: Path) -> None:
        arrays = {
            **{f"{_PARAMETER}{name}": array for name, array in self.parameters.items()},
            **{f"{_STRATEGY}{name}": array for name, array in self.strategy_state.items()},
        }
        state = json.dumps({"round": self.server_round, **self.state}, allow_nan=False)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".npz"
        )
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(
                    out,
                    scaler_mean=self.scaler_mean,
                    scaler_scale=self.scaler_scale,
                    state=np.frombuffer(state.encode(), dtype=np.uint8),
                    results=np.frombuffer(self.results, dtype=np.uint8),
                    **arrays,
                )
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        with np.load(path, allow_pickle=False) as stored:
            state = json.loads(stored["state"].tobytes())
            return cls(
                state.pop("round"),
                _prefixed(stored, _PARAMETER),
                stored["scaler_mean"],
                stored["scaler_scale"],
                state,
                _prefixed(stored, _STRATEGY),
                stored["results"].tobytes() if "results" in stored.files else b"",
            )


def _prefixed(stored: np.lib.npyio.NpzFile, prefix: str) -> Arrays:
    return {
        name.removeprefix(prefix): stored[name] for name in stored.files if name.startswith(prefix)
    }
