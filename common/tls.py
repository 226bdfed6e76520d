"""Mutual TLS for the federation: who the server is, and which province each client is.

The folder layout is the one `python -m server.certs` writes: ca.pem, server.pem/.key and
<province>.pem/.key.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID


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


def check_client_certificate(
    folder: Path, province: str, now: datetime.datetime | None = None, identity: str | None = None
) -> None:
    """Refuse, naming the fault, a certificate the server would refuse: another province's, one
    not issued by ca.pem, or one outside its validity. The server only closes the connection on
    those, which a client cannot tell from a server that requires TLS."""
    path = folder / f"{province}.pem"
    own, ca = read_pem(folder, f"{province}.pem"), read_pem(folder, "ca.pem")
    try:
        certificate, authority = (
            x509.load_pem_x509_certificate(own),
            x509.load_pem_x509_certificate(ca),
        )
    except ValueError as error:
        raise TLSSetupError(
            f"{path} or {folder / 'ca.pem'} is not a PEM certificate: {error}"
        ) from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    owner = str(names[0].value) if names else ""
    if owner != (identity or province):
        raise TLSSetupError(
            f"{path} is the certificate of {owner or 'no province'}, not of {province}: "
            f"use {province}'s own certificate and key from the federation's operator"
        )
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        raise TLSSetupError(
            f"{path} was not issued by the CA in {folder / 'ca.pem'}: it belongs to another "
            "federation; use the certificate and ca.pem the same operator made"
        ) from None
    moment = now or datetime.datetime.now(datetime.UTC)
    if moment > certificate.not_valid_after_utc:
        raise TLSSetupError(
            f"{path} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: ask the "
            "federation's operator for a new one (python -m server.certs)"
        )
    if moment < certificate.not_valid_before_utc:
        raise TLSSetupError(
            f"{path} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: "
            "check this machine's clock"
        )


def client_credentials(
    folder: Path, province: str, identity: str | None = None
) -> grpc.ChannelCredentials:
    """A province's identity (its certificate names `identity`, by default the province's own
    name), checked first, and the CA the server's certificate must chain to."""
    check_client_certificate(folder, province, identity=identity)
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(folder, "ca.pem"),
        private_key=read_pem(folder, f"{province}.key"),
        certificate_chain=read_pem(folder, f"{province}.pem"),
    )


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The common name of the verified client certificate on this call, if there is one."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None
