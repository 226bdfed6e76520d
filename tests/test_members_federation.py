"""A tenth data owner joins: ten real client processes and a server over mutual TLS on
localhost, all reading one members file; and a server whose members do not include it refuses
its join."""

import subprocess
import sys

import pytest
from cryptography import x509

from common.launch import LocalFederation, free_port
from common.members import load
from common.provinces import PROVINCES
from common.tls import server_credentials
from server.__main__ import build_server
from server.coordinator import Coordinator

pytestmark = pytest.mark.integration

ROWS, SEED = 20_000, 3
FAST = ["--poll-seconds", "2", "--round-timeout", "600", "--join-timeout", "900"]


@pytest.fixture
def members_file(tmp_path):
    path = tmp_path / "members.csv"
    rows = [f"{name},{name.capitalize()},{name}" for name in PROVINCES]
    path.write_text("\n".join(["name,display_name,identity", *rows, "chongqing,,cq-bank"]) + "\n")
    return path


def test_ten_members_federate_to_the_end_with_the_tenth_in_every_result(tmp_path, members_file):
    members = load(members_file)
    federation = LocalFederation(
        tmp_path / "run",
        "lr-exact",
        1,
        ROWS,
        SEED,
        provinces=members.names,
        members_file=members_file,
        server_args=FAST,
    )
    federation.start()
    codes = federation.wait(timeout=600)
    assert codes == {name: 0 for name in ["server", *members.names]}, codes
    final = federation.results()["final"]
    assert sorted(final["per_client"]) == sorted(members.names)
    certificate = x509.load_pem_x509_certificate(
        (federation.tls_dir / "chongqing.pem").read_bytes()
    )
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert names[0].value == "cq-bank"


def test_a_server_without_the_tenth_member_refuses_it_by_name(tmp_path, members_file):
    certs = tmp_path / "certs"
    made = subprocess.run(
        [sys.executable, "-m", "server.certs", "--out", str(certs), "--members", str(members_file)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    address = f"localhost:{free_port()}"
    # The paper's nine only: chongqing's certificate is from the right CA, for a non-member.
    server, _ = build_server(
        Coordinator(poll_seconds=1), address, 8, 1 << 20, server_credentials(certs)
    )
    server.start()
    try:
        command = ["-m", "client", "--province", "chongqing", "--server", address]
        done = subprocess.run(
            [
                sys.executable,
                *command,
                "--tls-dir",
                str(certs),
                "--members",
                str(members_file),
                "--rows",
                "3000",
                "--connect-timeout",
                "600",
                "--receipts",
                str(tmp_path / "receipts"),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        server.stop(grace=0)
    assert done.returncode != 0
    assert "refused" in done.stderr and "unknown member 'chongqing'" in done.stderr
