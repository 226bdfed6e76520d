"""Mutual TLS over real localhost gRPC: who may join, and as whom."""

import datetime

import grpc
import pytest

from common.launch import free_port
from common.tls import client_credentials, server_credentials
from common.wire import SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server.__main__ import build_server
from server.certs import DEFAULT_SERVER_NAMES, Authority, write_federation
from server.coordinator import Coordinator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    certs = tmp_path_factory.mktemp("certs")
    write_federation(certs, DEFAULT_SERVER_NAMES, ("hubei", "fujian"))
    address = f"localhost:{free_port()}"
    server, _ = build_server(
        Coordinator(poll_seconds=1), address, 8, 1 << 20, server_credentials(certs)
    )
    server.start()
    yield certs, address
    server.stop(grace=0)


def stub(address, credentials):
    return pb_grpc.FederationStub(grpc.secure_channel(address, credentials))


def join_error(address, credentials, province="hubei"):
    with pytest.raises(grpc.RpcError) as refused:
        stub(address, credentials).Join(pb.JoinRequest(province=province), timeout=10)
    return refused.value


def test_a_province_joins_with_its_own_certificate(federation):
    certs, address = federation
    reply = stub(address, client_credentials(certs, "fujian")).Join(
        pb.JoinRequest(province="fujian"), timeout=10
    )
    assert reply.session


def test_a_client_claiming_another_province_is_refused(federation):
    certs, address = federation
    error = join_error(address, client_credentials(certs, "hubei"), province="fujian")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "your certificate is for hubei" in error.details()


def test_a_session_cannot_be_used_under_another_certificate(federation):
    certs, address = federation
    hubei = stub(address, client_credentials(certs, "hubei"))
    session = hubei.Join(pb.JoinRequest(province="hubei"), timeout=10).session
    thief = stub(address, client_credentials(certs, "fujian"))
    with pytest.raises(grpc.RpcError) as refused:
        list(
            thief.GetTask(pb.TaskRequest(), timeout=10, metadata=((SESSION_METADATA_KEY, session),))
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_no_certificate_and_no_tls_never_reach_the_service(federation):
    certs, address = federation
    anonymous = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    assert join_error(address, anonymous).code() == grpc.StatusCode.UNAVAILABLE
    plain = pb_grpc.FederationStub(grpc.insecure_channel(address))
    with pytest.raises(grpc.RpcError) as refused:
        plain.Join(pb.JoinRequest(province="hubei"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def credentials_from(authority, certs, **issue):
    key, certificate = authority.issue("hubei", (), client=True, **issue)
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=key,
        certificate_chain=certificate,
    )


def test_a_certificate_from_a_foreign_ca_is_refused(federation):
    certs, address = federation
    foreign = credentials_from(Authority.create("another CA"), certs)
    assert join_error(address, foreign).code() == grpc.StatusCode.UNAVAILABLE


def test_an_expired_certificate_is_refused(federation, tmp_path):
    certs, address = federation
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    authority = Authority(
        serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None),
        x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes()),
    )
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = credentials_from(authority, certs, days=1, not_before=long_ago)
    assert join_error(address, expired).code() == grpc.StatusCode.UNAVAILABLE
    fresh = credentials_from(authority, certs)
    assert stub(address, fresh).Join(pb.JoinRequest(province="hubei"), timeout=10).session
