"""Common TLS mistakes get a clear answer, not retries: a real client process against a real
gRPC server over localhost, with the two sides' TLS settings or certificates mismatched."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.launch import LocalFederation, free_port
from common.tls import TLSSetupError, check_client_certificate, server_credentials
from server.__main__ import build_server
from server.certs import DEFAULT_SERVER_NAMES, Authority, write_federation
from server.coordinator import Coordinator

pytestmark = pytest.mark.integration

# Longer than the server's 30 s quorum report, so a waiting server reports at least once.
JOIN_40 = ["--join-timeout", "40", "--poll-seconds", "2"]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> tuple[Path, Path]:
    """Two federations' certificates: ours, and another operator's."""
    ours, theirs = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("theirs")
    write_federation(ours, DEFAULT_SERVER_NAMES, ("hubei", "fujian"))
    write_federation(theirs, DEFAULT_SERVER_NAMES, ("hubei",))
    return ours, theirs


@pytest.fixture
def serve():
    """Starts a federation server on a free localhost port; stops it after the test."""
    servers = []

    def start(credentials) -> str:
        address = f"localhost:{free_port()}"
        server, _ = build_server(Coordinator(poll_seconds=1), address, 8, 1 << 20, credentials)
        server.start()
        servers.append(server)
        return address

    yield start
    for server in servers:
        server.stop(grace=0)


def client(address: str, *security: str) -> subprocess.CompletedProcess:
    """A province client process run to its end (generous bound: it only loads 3,000 rows)."""
    command = ["-m", "client", "--province", "hubei", "--server", address, "--rows", "3000"]
    return subprocess.run(
        [sys.executable, *command, "--connect-timeout", "600", *security],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_tls_client_facing_a_plaintext_server_says_so_at_once(certificates, serve):
    address = serve(None)
    done = client(address, "--tls-dir", str(certificates[0]))
    assert done.returncode == 1, done.stderr
    assert f"the server at {address} speaks plaintext" in done.stderr
    assert "--insecure" in done.stderr
    assert "retrying" not in done.stderr  # the first refusal is the verdict


def test_a_plaintext_client_facing_a_tls_server_is_told_it_requires_tls(certificates, serve):
    address = serve(server_credentials(certificates[0]))
    done = client(address, "--insecure")
    assert done.returncode == 1, done.stderr
    assert "it requires TLS" in done.stderr and "gave up" not in done.stderr


def test_a_server_certificate_from_another_ca_is_named(certificates, serve):
    ours, theirs = certificates
    address = serve(server_credentials(theirs))
    done = client(address, "--tls-dir", str(ours))
    assert done.returncode == 1, done.stderr
    assert "the server's certificate" in done.stderr
    assert "was not issued by this client's ca.pem" in done.stderr


def test_a_client_certificate_from_another_ca_is_named_before_connecting(certificates, tmp_path):
    ours, theirs = certificates
    mixed = shutil.copytree(ours, tmp_path / "mixed")
    for suffix in (".pem", ".key"):
        shutil.copy(theirs / f"hubei{suffix}", mixed / f"hubei{suffix}")
    done = client(f"localhost:{free_port()}", "--tls-dir", str(mixed))
    assert done.returncode == 2, done.stderr
    assert "hubei.pem was not issued by the CA in" in done.stderr


def test_another_provinces_certificate_is_named(certificates, tmp_path):
    folder = shutil.copytree(certificates[0], tmp_path / "swapped")
    for suffix in (".pem", ".key"):
        shutil.copy(folder / f"fujian{suffix}", folder / f"hubei{suffix}")
    with pytest.raises(TLSSetupError, match="is the certificate of fujian, not of hubei"):
        check_client_certificate(folder, "hubei")


def test_an_expired_certificate_is_named_with_its_date(certificates, tmp_path):
    folder = shutil.copytree(certificates[0], tmp_path / "expired")
    authority = Authority(
        serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None),
        x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes()),
    )
    start = datetime.datetime(2020, 3, 1, tzinfo=datetime.UTC)
    key, certificate = authority.issue("hubei", (), client=True, days=10, not_before=start)
    (folder / "hubei.key").write_bytes(key)
    (folder / "hubei.pem").write_bytes(certificate)
    with pytest.raises(TLSSetupError, match=r"hubei\.pem expired on 2020-03-11 00:00 UTC"):
        check_client_certificate(folder, "hubei")
    with pytest.raises(TLSSetupError, match="not valid before 2020-03-01"):
        check_client_certificate(folder, "hubei", now=start - datetime.timedelta(days=1))
    check_client_certificate(folder, "hubei", now=start + datetime.timedelta(days=5))
    done = client(f"localhost:{free_port()}", "--tls-dir", str(folder))
    assert done.returncode == 2 and "expired on 2020-03-11" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("server_insecure", "client_says", "server_says"),
    [
        (True, "speaks plaintext", ["this server speaks plaintext (--insecure): a client started"]),
        (
            False,
            "it requires TLS",
            ["this server requires TLS: a client started with --insecure", "WRONG_VERSION_NUMBER"],
        ),
    ],
    ids=["plaintext server, TLS client", "TLS server, plaintext client"],
)
def test_a_waiting_server_says_what_a_mismatched_client_must_do(
    certificates, tmp_path, server_insecure, client_says, server_says
):
    """Its quorum report (every 30 s) names its TLS setting; the join timeout is longer than one
    period, so the report comes however the processes are scheduled."""
    federation = LocalFederation(
        tmp_path, "lr", 1, provinces=("hubei",), insecure=server_insecure, server_args=JOIN_40
    )
    federation.start_server()
    security = ["--tls-dir", str(certificates[0])] if server_insecure else ["--insecure"]
    try:
        done = client(federation.address, *security)
        assert done.returncode == 1 and client_says in done.stderr, done.stderr
        assert federation.server.wait(timeout=600) == 1
    finally:
        federation.kill()
    log = (tmp_path / "server.log").read_text()
    assert "0 of 1 connected" in log
    assert all(text in log for text in server_says), log[-3000:]
