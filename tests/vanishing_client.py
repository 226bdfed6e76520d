"""A province daemon that kills itself (SIGKILL, as a crash or `kill -9` would) when it is handed
a chosen task: `python -m tests.vanishing_client --vanish-at ROUND:KIND:N <client flags>` runs
the real client and dies on receiving the N-th task of kind KIND (`train`, `secagg_keys`,
`secagg_unmask`, ...) of round ROUND. A kill from outside lands wherever the scheduler lets
it; this one lands at the same step of the protocol every time.
"""

import os
import signal
import sys

from client import __main__ as client_main
from client.daemon import ClientDaemon
from common.tensors import Arrays
from proto.fedstock.v1 import federation_pb2 as pb


def kind_name(kind: int) -> str:
    return pb.TaskKind.Name(kind).removeprefix("TASK_KIND_").lower()


def main() -> int:
    argv = sys.argv[1:]
    flag = argv.index("--vanish-at")
    round_text, kind, nth_text = argv[flag + 1].split(":")
    round_number, nth = int(round_text), int(nth_text)
    del argv[flag : flag + 2]
    handle = ClientDaemon._handle
    seen = 0

    def handle_or_vanish(self: ClientDaemon, task: pb.Task, parameters: Arrays | None) -> bool:
        nonlocal seen
        if task.round == round_number and kind_name(task.kind) == kind:
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return handle(self, task, parameters)

    ClientDaemon._handle = handle_or_vanish
    return client_main.main(argv)


if __name__ == "__main__":
    sys.exit(main())
