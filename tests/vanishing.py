"""What the vanishing programs share (tests/vanishing_client.py, tests/vanishing_server.py): a
program that SIGKILLs itself, as a crash or `kill -9` would, at a chosen step of a chosen
round. A kill from outside, sent once a log or file shows round N, lands wherever the scheduler
lets it (mid-protocol, or after the whole next round); this one lands at the same step of the
protocol every time.

The step is named `--vanish-at ROUND:STEP:N`: the program dies the N-th time it reaches STEP
in round ROUND. Each program says which steps it knows.
"""

import os
import signal
import threading
from dataclasses import dataclass, field

from common.launch import LocalFederation
from proto.fedstock.v1 import federation_pb2 as pb

FLAG = "--vanish-at"


def kind_name(kind: int) -> str:
    """A task kind as a step is named: `train`, `secagg_keys`, `secagg_unmask`, ..."""
    return pb.TaskKind.Name(kind).removeprefix("TASK_KIND_").lower()


@dataclass
class Vanishing:
    """Where the program dies, and how often it has reached that step so far."""

    round: int
    step: str
    nth: int
    seen: int = 0
    # Steps may be reached on several threads at once (the server's call handlers).
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def take(cls, argv: list[str], steps: str) -> "Vanishing":
        """Read and remove `--vanish-at ROUND:STEP:N` from `argv`; `steps` says which STEP names
        the program knows, for the error."""
        if FLAG not in argv[:-1]:
            raise SystemExit(f"{FLAG} ROUND:STEP:N is required (STEP: {steps})")
        at = argv.index(FLAG)
        spec = argv[at + 1]
        del argv[at : at + 2]
        try:
            round_text, step, nth_text = spec.split(":")
            vanishing = cls(int(round_text), step, int(nth_text))
        except ValueError:
            raise SystemExit(f"{FLAG} takes ROUND:STEP:N, not {spec!r}") from None
        if vanishing.round < 0 or vanishing.nth < 1:
            raise SystemExit(f"{FLAG} {spec}: the round is 0 or more and N 1 or more")
        return vanishing

    def reached(self, server_round: int, step: str) -> None:
        """The program reached `step` of `server_round`: dies if that was the chosen time."""
        if server_round != self.round or step != self.step:
            return
        with self.lock:
            self.seen += 1
            if self.seen == self.nth:
                os.kill(os.getpid(), signal.SIGKILL)


def start_with_vanishing_server(federation: LocalFederation, at: str) -> None:
    """Start `federation` as `start` does, but with a server that dies at `at` (ROUND:STEP:N)."""
    federation.start_server(FLAG, at, module="tests.vanishing_server")
    for province in federation.provinces:
        federation.start_client(province)
