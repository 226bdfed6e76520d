"""How a run ends: whatever stops the round loop, the federation is told and the port closed.

Fail closed and loud: an error anywhere in the loop (a bug, a full disk, a value no check
foresaw) marks the results failed with the reason, tells every client STOP(failed), stops the
gRPC server and gives a non-zero status, so no process is left running that answers nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health

from common.bounded import bounded
from server.coordinator import Coordinator
from server.ledger import LedgerError
from server.results import ResultsFile
from server.rounds import FederationError

log = logging.getLogger("fedstock.server")


def run_to_end(
    run: Callable[[], None],
    coordinator: Coordinator,
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    results: ResultsFile,
    grace_seconds: float,
) -> int:
    """Run the federation, then end it cleanly however it went: 0, 1 (failed) or 130."""
    try:
        run()
        status, reason = 0, "training is complete"
    except (FederationError, LedgerError) as error:
        log.error("federation stopped: %s", error)
        status, reason = 1, f"the federation failed: {bounded(error)}"
    except KeyboardInterrupt:
        log.warning("interrupted")
        status, reason = 130, "the server was interrupted"
    except Exception as error:  # any fault must end the run, never hang it
        log.exception("federation stopped by an internal error")
        status = 1
        reason = f"the federation failed: internal error: {type(error).__name__}: {bounded(error)}"
    if status:
        results.fail(reason)
    try:
        coordinator.stop(reason, failed=status != 0, grace_seconds=grace_seconds)
    finally:
        health_servicer.enter_graceful_shutdown()
        server.stop(grace=2).wait()
    return status
