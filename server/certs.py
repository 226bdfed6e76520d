"""`python -m server.certs`: a certificate authority for one federation, and its identities.

Writes, into one folder: the CA (`ca.pem`, `ca.key` — keep the key offline once done), the
server's certificate for every name it is reached by, and one client certificate per province
whose common name is the province. The server takes a client's province from that certificate,
never from what the client says.
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.members import PAPER, Members

DEFAULT_SERVER_NAMES = ("server", "localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedstock federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A CA key and certificate that signs the federation's identities."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self.key = key
        self.certificate = certificate

    @classmethod
    def create(cls, name: str = "fedstock CA", days: int = 3650) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(
        self,
        common_name: str,
        alt_names: tuple[str, ...],
        client: bool,
        days: int = 825,
        not_before: datetime.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A new key and a certificate for it, as PEM (key, certificate)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alt_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_alt_name(n) for n in alt_names]), critical=False
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        return _key_pem(key), certificate.public_bytes(serialization.Encoding.PEM)

    def pem(self) -> tuple[bytes, bytes]:
        return _key_pem(self.key), self.certificate.public_bytes(serialization.Encoding.PEM)


def write_federation(
    out: Path, server_names: tuple[str, ...], members: Members | Iterable[str] = PAPER
) -> None:
    """The CA, the server's identity and every member's (<name>.pem naming its identity);
    `members` may be plain names, each its own identity."""
    members = members if isinstance(members, Members) else Members.of(members)
    out.mkdir(parents=True, exist_ok=True)
    authority = Authority.create()
    files = {"ca": authority.pem(), "server": authority.issue(server_names[0], server_names, False)}
    for member in members:
        files[member.name] = authority.issue(member.identity, (), client=True)
    for stem, (key, certificate) in files.items():
        key_path = out / f"{stem}.key"
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        (out / f"{stem}.pem").write_bytes(certificate)


if __name__ == "__main__":  # the command line is server/certs_cli.py
    from server.certs_cli import main

    sys.exit(main())
