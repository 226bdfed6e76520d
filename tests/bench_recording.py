"""What recording a round costs the round loop, and whether it grows with the run.

`python -m tests.bench_recording`: the server's own Recorder with a real results file, ledger
(signed by a key made for the run) and checkpoint in a fresh folder, fed R rounds of records
shaped as an lr-sgd round of nine provinces records them (eleven scores a province), and times
each `commit` as the round loop waits for it. Prints the median commit of the first and the
last quarter of the rounds, so growth shows as a difference. Measures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common.provinces import PROVINCES
from common.scores import Evaluation
from server.ledger import Ledger, Signer
from server.recorder import Recorder, RunState
from server.results import ResultsFile

SCORES = ("mse", "mae", "direction", "persistence_mse", "last_close_mse", "oracle_mse", "skill")


def round_record(number: int, rng: np.random.Generator) -> dict:
    per_client = {
        p: {**{s: float(rng.random()) for s in SCORES}, "n_test": 59_000, "beats_naive": False}
        for p in PROVINCES
    }
    return {
        "round": number,
        "clients": list(PROVINCES),
        "absent": [],
        "mse": float(rng.random()),
        "train_mse": float(rng.random()),
        "per_client": per_client,
        "failures": [],
        "seconds": 0.05,
        "overhead_seconds": 0.01,
        "server_cpu_seconds": 0.01,
        "bytes_down": 1_440,
        "bytes_up": 1_440,
    }


def commits(folder: Path, rounds: int) -> list[float]:
    """Seconds each round's commit took, in order."""
    rng = np.random.default_rng(7)
    results = ResultsFile(folder / "results.json", {"model": "lr-sgd", "config": {"r": rounds}})
    ledger = Ledger(folder / "ledger.jsonl", Signer.ephemeral())
    recorder = Recorder(results, ledger, folder / "checkpoint.npz", "next-day", rounds)
    scaler = (np.zeros(8), np.ones(8))
    taken = []
    for number in range(1, rounds + 1):
        record = round_record(number, rng)
        parameters = {"coef": rng.random(8), "intercept": rng.random(1)}
        evaluation = Evaluation(record["mse"], record["per_client"])
        started = time.perf_counter()
        recorder.commit(
            record,
            {p: "0" * 64 for p in PROVINCES},
            parameters,
            evaluation,
            RunState(1.0, scaler, {}),
        )
        taken.append(time.perf_counter() - started)
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument(
        "--folder",
        type=Path,
        default=Path("runs"),
        help="where to write: on the disk the results go to, as its flushes are measured",
    )
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        taken = commits(Path(folder), args.rounds)
    quarter = max(args.rounds // 4, 1)
    first, last = taken[:quarter], taken[-quarter:]
    print(
        f"{args.rounds} rounds recorded (load average {os.getloadavg()[0]:.1f}): median commit "
        f"{statistics.median(first) * 1000:.2f} ms in the first {quarter}, "
        f"{statistics.median(last) * 1000:.2f} ms in the last {quarter}"
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
