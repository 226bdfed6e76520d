"""A server waiting for its quorum says who is connected and who is not, every period."""

from __future__ import annotations

import logging

import grpc
import pytest

from common.launch import free_port
from common.wire import SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from server import coordinator as coordinator_module
from server.__main__ import build_server
from server.coordinator import Coordinator

pytestmark = pytest.mark.integration


def test_the_wait_for_the_quorum_reports_who_is_connected_and_who_is_missing(caplog, monkeypatch):
    # A province that joined counts as connected for the whole test, however slow the machine.
    monkeypatch.setattr(coordinator_module, "RECENTLY_SEEN_SECONDS", float("inf"))
    coordinator = Coordinator(poll_seconds=1, report_seconds=0.5)
    address = f"127.0.0.1:{free_port()}"
    server, _ = build_server(coordinator, address, 8, 1 << 20)
    server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.FederationStub(channel)
            for province in ("hubei", "fujian"):
                joined = stub.Join(pb.JoinRequest(province=province, rows=10), timeout=60)
                # A session is a member from its first poll (a WAIT after one second here).
                session = ((SESSION_METADATA_KEY, joined.session),)
                list(stub.GetTask(pb.TaskRequest(), timeout=60, metadata=session))
            with caplog.at_level(logging.INFO, logger="fedstock.server"):
                # Longer than one period, so at least one report however the threads run.
                connected = coordinator.wait_for_clients(3, timeout=2)
    finally:
        server.stop(grace=0)
    assert connected == ["fujian", "hubei"]
    reports = [r.getMessage() for r in caplog.records if "waiting for the quorum" in r.message]
    assert reports, caplog.text
    assert all("2 of 3 connected" in report for report in reports)
    assert all(
        report.endswith(
            "fujian, hubei; not connected: beijing, guangdong, jiangsu, "
            "shandong, shanghai, sichuan, zhejiang"
        )
        for report in reports
    )
