"""Mutual TLS for the federation: who the server is, and which province each client is.

The folder layout is the one `python -m server.certs` writes: ca.pem, server.pem/.key and
<province>.pem/.key.
"""

from __future__ import annotations

from pathlib import Path

import grpc


class TLSSetupError(ValueError):
    """Certificates that cannot be used; the message names the file and how to make one."""


def read_pem(folder: Path, name: str) -> bytes:
    """One of the federation's certificate or key files, or an error that says how to make it."""
    path = folder / name
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSSetupError(
            f"cannot read {path} ({error.strerror}); create the federation's certificates "
            "with `python -m server.certs --out DIR`, or run without TLS with --insecure"
        ) from None


def server_credentials(folder: Path) -> grpc.ServerCredentials:
    """The server's identity, and the CA every client certificate must chain to."""
    return grpc.ssl_server_credentials(
        [(read_pem(folder, "server.key"), read_pem(folder, "server.pem"))],
        root_certificates=read_pem(folder, "ca.pem"),
        require_client_auth=True,
    )


def client_credentials(folder: Path, province: str) -> grpc.ChannelCredentials:
    """A province's identity, and the CA the server's certificate must chain to."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(folder, "ca.pem"),
        private_key=read_pem(folder, f"{province}.key"),
        certificate_chain=read_pem(folder, f"{province}.pem"),
    )


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The common name of the verified client certificate on this call, if there is one."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None
