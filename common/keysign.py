"""Signed secure-aggregation keys: the server relays them, but cannot slip in its own.

Secure aggregation's masks come from X25519 keys that travel through the server. A server that
swapped a province's keys for its own would agree that province's masks with everyone and
could unmask its update. So each province signs its key bundle (round, its index, its
province, its keys) with the private key of its mTLS certificate, the server relays the bundle
with the signature and the certificate, and every province checks, before deriving any mask,
that the certificate was issued by the federation's CA for client use, names the province the
server announced for that index, and signed exactly these keys.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.members import PAPER, Members
from common.secagg import SecAggError
from common.tls import TLSSetupError, read_pem

SIGNATURE = ec.ECDSA(hashes.SHA256())


class KeyAuthenticationError(SecAggError):
    """A relayed key bundle does not come from the province it is announced for."""


def bundle(
    server_round: int, index: int, province: str, keys: bytes, context: bytes = b""
) -> bytes:
    """The signed message: bound to one round, one position and the round's announcement
    (`context`), so it cannot be replayed into another round or a differently announced one."""
    return (
        b"fedstock secagg keys v1\0"
        + struct.pack(">QQ", server_round, index)
        + (province.encode() + b"\0" + keys)
        + context
    )


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


@dataclass(frozen=True)
class Identity:
    """A province's certificate and key, and the CA every other province's must chain to."""

    province: str
    key: ec.EllipticCurvePrivateKey
    certificate: bytes  # PEM, relayed with each signature
    authority: x509.Certificate
    members: Members = PAPER  # whose certificate names which identity

    @classmethod
    def load(cls, folder: Path, province: str, members: Members = PAPER) -> Identity:
        """The files `python -m server.certs` writes: <province>.key/.pem and ca.pem."""
        key = serialization.load_pem_private_key(read_pem(folder, f"{province}.key"), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TLSSetupError(f"{folder / province}.key is not an elliptic-curve key")
        authority = x509.load_pem_x509_certificate(read_pem(folder, "ca.pem"))
        return cls(province, key, read_pem(folder, f"{province}.pem"), authority, members)

    def sign(self, server_round: int, index: int, keys: bytes, context: bytes = b"") -> bytes:
        return self.sign_message(bundle(server_round, index, self.province, keys, context))

    def sign_message(self, message: bytes) -> bytes:
        return self.key.sign(message, SIGNATURE)

    def verify(
        self,
        server_round: int,
        index: int,
        province: str,
        keys: bytes,
        signature: bytes,
        certificate: bytes,
        context: bytes = b"",
    ) -> None:
        """Raises KeyAuthenticationError unless `province` signed `keys` for this round, index
        and announcement with a client certificate from the federation's CA."""
        self.verify_message(
            bundle(server_round, index, province, keys, context),
            province,
            signature,
            certificate,
            f"round {server_round}: the keys relayed as {province}'s (client {index})",
            "derive masks from them",
        )

    def verify_message(
        self,
        message: bytes,
        province: str,
        signature: bytes,
        certificate: bytes,
        what: str,
        action: str,
    ) -> None:
        """Raises KeyAuthenticationError naming `what` unless `province` signed `message` with
        a client certificate from the federation's CA; `action` is what the caller refuses."""

        def refuse(why: str) -> KeyAuthenticationError:
            return KeyAuthenticationError(
                f"{what} {why}; refusing to {action} (is the server tampering?)"
            )

        try:
            leaf = x509.load_pem_x509_certificate(certificate)
        except ValueError:
            raise refuse("come without a readable certificate") from None
        try:
            leaf.verify_directly_issued_by(self.authority)
        except (ValueError, TypeError, InvalidSignature):
            raise refuse("carry a certificate the federation's CA did not issue") from None
        now = datetime.datetime.now(datetime.UTC)
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            raise refuse("carry an expired or not yet valid certificate")
        try:
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            raise refuse("carry a certificate not issued to a client")
        if self.members.by_identity(_common_name(leaf)) != province:
            raise refuse(f"carry {_common_name(leaf)!r}'s certificate")
        public = leaf.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise refuse("carry a certificate without an elliptic-curve key")
        try:
            public.verify(signature, message, SIGNATURE)
        except InvalidSignature:
            raise refuse("do not match their signature") from None
