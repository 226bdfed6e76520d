"""A province daemon that kills itself on being handed a chosen task: `python -m
tests.vanishing_client --vanish-at ROUND:KIND:N <client flags>` runs the real client and dies
on receiving the N-th task of kind KIND (`train`, `secagg_keys`, `secagg_unmask`, ...) of round
ROUND, before it acts on it (tests/vanishing.py says why).
"""

import sys

from client import __main__ as client_main
from client.daemon import ClientDaemon
from common.tensors import Arrays
from proto.fedstock.v1 import federation_pb2 as pb
from tests.vanishing import Vanishing, kind_name


def main() -> int:
    argv = sys.argv[1:]
    vanishing = Vanishing.take(argv, "a task kind")
    handle = ClientDaemon._handle

    def handle_or_vanish(self: ClientDaemon, task: pb.Task, parameters: Arrays | None) -> bool:
        vanishing.reached(task.round, kind_name(task.kind))
        return handle(self, task, parameters)

    ClientDaemon._handle = handle_or_vanish
    return client_main.main(argv)


if __name__ == "__main__":
    sys.exit(main())
