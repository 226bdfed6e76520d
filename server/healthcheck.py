"""Ask a fedstock server whether it is serving, through the standard gRPC health service.

    python -m server.healthcheck --address HOST:PORT [--timeout S] [--service NAME]

Exits 0 when the server answers SERVING for the service (default "", the whole server),
1 otherwise (not serving, unreachable, or no answer before the deadline), printing one line.
Used by the compose healthcheck, so it must stay quick and quiet.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, timeout: float, service: str = "") -> tuple[bool, str]:
    """Return (serving, one-line message) for the health of `service` at `address`."""
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            # wait_for_ready: a server still starting up counts against the deadline
            # instead of failing at once on the first refused connection.
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout,
                wait_for_ready=True,
            )
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else None
        name = code.name if code is not None else type(err).__name__
        details = err.details() if hasattr(err, "details") else str(err)
        suffix = f": {details}" if details else ""
        return False, f"{address}: health check failed: {name}{suffix}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


if __name__ == "__main__":  # the command line is server/healthcheck_cli.py
    from server.healthcheck_cli import main

    sys.exit(main())
