"""Conventions both ends of the federation's gRPC link must agree on."""

from __future__ import annotations

from collections.abc import Mapping

from proto.fedstock.v1 import federation_pb2 as pb

SOFTWARE_VERSION = "0.1.0"
SESSION_METADATA_KEY = "x-fedstock-session"
# The contract's version, announced by both sides in Join: 1 is Join/GetTask/Submit, 2 adds the
# Session stream, 3 the stream on which an outcome's answer is the next task and small payloads
# travel inline (docs/transport.md). A peer that leaves the field unset speaks 1. A stream
# speaks the older of the two sides' versions, from STREAM_PROTOCOL_VERSION on.
PROTOCOL_VERSION = 3
STREAM_PROTOCOL_VERSION = 2
# From this version on, a stream answers an outcome with the next task and carries payloads
# that fit one chunk inside their task or outcome.
ANSWERED_BY_TASK_VERSION = 3

ConfigScalar = float | int | str | bool

# Chunks are 1 MiB; a message never needs more than a few MiB, whatever the model's size.
MAX_MESSAGE_BYTES = 16 << 20

# Pings keep long local training from looking like a dead link to proxies and to gRPC itself.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
]

# Each upload stream's receive window at the federation server (HTTP/2 flow control), in KiB:
# what a client may send before the server has read it. gRPC's own bandwidth-delay probe starts
# a stream at 4 MiB and grows it on a fast link, and with nine uploads at once all of that sits
# in the server's buffers while its handler threads catch up (docs/performance.md, "The
# upload side"). A fixed 512 KiB still carries 10 MB/s a stream over 50 ms of round trip.
DEFAULT_RECEIVE_WINDOW_KB = 512
# From about HTTP/2's own initial window (65,535 bytes) up to its largest (2**31 - 1 bytes).
RECEIVE_WINDOW_KB_RANGE = (64, (2**31 - 1) >> 10)


def server_options(receive_window_kb: int) -> list[tuple[str, int]]:
    """The federation server's gRPC options: SERVER_OPTIONS with every stream's receive window
    fixed at `receive_window_kb` KiB, or with 0 left to gRPC's bandwidth-delay probe."""
    if receive_window_kb == 0:
        return list(SERVER_OPTIONS)
    low, high = RECEIVE_WINDOW_KB_RANGE
    if not low <= receive_window_kb <= high:
        raise ValueError(
            f"a receive window is 0 (gRPC's probe) or {low} to {high} KiB, not {receive_window_kb}"
        )
    return [
        *SERVER_OPTIONS,
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", receive_window_kb << 10),
    ]


def to_config(values: Mapping[str, ConfigScalar]) -> dict[str, pb.ConfigValue]:
    """Typed task configuration; bool is checked before int because bool is an int in Python."""
    config: dict[str, pb.ConfigValue] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            config[key] = pb.ConfigValue(flag=value)
        elif isinstance(value, int):
            config[key] = pb.ConfigValue(integer=value)
        elif isinstance(value, float):
            config[key] = pb.ConfigValue(number=value)
        elif isinstance(value, str):
            config[key] = pb.ConfigValue(text=value)
        else:
            raise TypeError(f"config value {key}={value!r} is not a number, text or flag")
    return config


def from_config(config: Mapping[str, pb.ConfigValue]) -> dict[str, ConfigScalar]:
    values: dict[str, ConfigScalar] = {}
    for key, value in config.items():
        kind = value.WhichOneof("value")
        if kind is None:
            raise ValueError(f"config value {key!r} is empty")
        values[key] = getattr(value, kind)
    return values
