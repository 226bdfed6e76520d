"""The server, killing itself at a chosen step: `python -m tests.vanishing_server --vanish-at
ROUND:STEP:N <server flags>` runs the real `python -m server` and dies (tests/vanishing.py says
why) at one of two kinds of step:

- `recorded` (N = 1): right after round ROUND is recorded, its checkpoint and ledger entry
  written (server/recorder.py), before the next round hands anything out: a restart resumes
  after round ROUND, and the ledger file holds its entry.
- a task kind (`train`, `evaluate`, ...): on the N-th answer to a task of that kind in round
  ROUND, checked but not yet counted: the round is half answered, its other provinces still at
  work; a restart resumes after round ROUND - 1 and does the round again.
"""

import sys
from typing import Any

from server import __main__ as server_main
from server.coordinator import Coordinator
from server.recorder import Recorder
from server.strategy import ClientResult
from tests.vanishing import Vanishing, kind_name


def main() -> int:
    argv = sys.argv[1:]
    vanishing = Vanishing.take(argv, "recorded, or a task kind")
    commit, resolve = Recorder.commit, Coordinator.resolve

    def commit_then_vanish(self: Recorder, record: dict[str, Any], *args: Any) -> None:
        commit(self, record, *args)
        vanishing.reached(record["round"], "recorded")

    def vanish_or_resolve(self: Coordinator, task_id: str, result: ClientResult) -> bool:
        if phase := self.task_phase(task_id):
            vanishing.reached(phase.server_round, kind_name(phase.kind))
        return resolve(self, task_id, result)

    Recorder.commit, Coordinator.resolve = commit_then_vanish, vanish_or_resolve
    return server_main.main(argv)


if __name__ == "__main__":
    sys.exit(main())
