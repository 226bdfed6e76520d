"""Each upload stream's receive window at the server (`--receive-window-kb`) reaches gRPC: the
server announces it in its HTTP/2 SETTINGS, read here off a real socket, and bad values are
refused with the flag's name."""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import replace

import pytest

from common.launch import free_port
from common.wire import DEFAULT_RECEIVE_WINDOW_KB, SERVER_OPTIONS, server_options
from server.__main__ import build_server
from server.cli import parse_args
from server.config import ConfigError
from server.coordinator import Coordinator

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, ACK = 0x4, 0x1
INITIAL_WINDOW_SIZE = 0x4


def frame(kind: int, flags: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame on stream 0."""
    return (
        struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", 0) + payload
    )


def announced_settings(port: int) -> dict[int, int]:
    """The settings a server at `port` sends first, as an HTTP/2 client hears them."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(PREFACE + frame(SETTINGS, 0))
        stream = sock.makefile("rb")
        while True:
            header = stream.read(9)
            if len(header) < 9:
                raise AssertionError("the server closed before sending its settings")
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            payload = stream.read(length)
            if kind == SETTINGS and not flags & ACK:
                return {
                    int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(
                        payload[i + 2 : i + 6], "big"
                    )
                    for i in range(0, len(payload), 6)
                }


@pytest.mark.parametrize("window_kb", [64, 256, DEFAULT_RECEIVE_WINDOW_KB])
def test_the_server_announces_the_window_it_was_given(window_kb: int) -> None:
    port = free_port()
    server, _ = build_server(
        Coordinator(poll_seconds=1), f"127.0.0.1:{port}", 16, 1 << 20, receive_window_kb=window_kb
    )
    server.start()
    try:
        assert announced_settings(port)[INITIAL_WINDOW_SIZE] == window_kb << 10
    finally:
        server.stop(grace=None)


def test_zero_leaves_the_window_to_grpcs_probe() -> None:
    assert server_options(0) == SERVER_OPTIONS
    fixed = dict(server_options(DEFAULT_RECEIVE_WINDOW_KB))
    assert fixed["grpc.http2.bdp_probe"] == 0
    assert fixed["grpc.http2.lookahead_bytes"] == DEFAULT_RECEIVE_WINDOW_KB << 10


@pytest.mark.parametrize("window_kb", [-1, 1, 63, 1 << 21])
def test_a_window_outside_http2s_range_is_refused(
    window_kb: int, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = f"a receive window is 0 (gRPC's probe) or 64 to 2097151 KiB, not {window_kb}"
    with pytest.raises(ValueError, match=re.escape(reason)):
        server_options(window_kb)
    with pytest.raises(ConfigError, match=re.escape(f"--receive-window-kb: {reason}")):
        replace(parse_args([]).serve, receive_window_kb=window_kb)
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--receive-window-kb", str(window_kb)])
    assert stopped.value.code == 2
    assert f"--receive-window-kb: {reason}" in capsys.readouterr().err


def test_the_flag_and_its_variable_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args([]).serve.receive_window_kb == DEFAULT_RECEIVE_WINDOW_KB
    assert parse_args(["--receive-window-kb", "0"]).serve.receive_window_kb == 0
    monkeypatch.setenv("FEDSTOCK_RECEIVE_WINDOW_KB", "256")
    assert parse_args([]).serve.receive_window_kb == 256
