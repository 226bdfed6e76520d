"""The server reads upload chunks without protobuf's copies (`upload_reader`), and reads every
request as protobuf would: the same part, the same bytes, the same refusal of garbage."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from proto.fedstock.v1 import federation_pb2 as pb
from server.servicer import DataPart, upload_reader

UPLOADS = (pb.SubmitChunk, pb.SessionUp)


def outcome(task_id: str) -> pb.Outcome:
    return pb.Outcome(task_id=task_id, round=3, num_examples=7, inline_data=b"\x00" * 5)


def others(kind: type[Message]) -> st.SearchStrategy[Message]:
    """Messages of `kind` with parts other than data, and none at all."""
    made = [st.builds(kind), st.builds(lambda t: kind(outcome=outcome(t)), st.text(max_size=20))]
    if kind is pb.SessionUp:
        made.append(st.just(pb.SessionUp(heartbeat=pb.Heartbeat())))
        made.append(st.just(pb.SessionUp(next=pb.TaskRequest())))
    return st.one_of(made)


def same_reading(kind: type[Message], raw: bytes) -> None:
    """`upload_reader(kind)` reads `raw` as `kind.FromString` does, or refuses it as it does."""
    try:
        parsed = kind.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            upload_reader(kind)(raw)
        return
    read = upload_reader(kind)(raw)
    assert read.WhichOneof("part") == parsed.WhichOneof("part")
    if parsed.WhichOneof("part") == "data":
        assert bytes(read.data) == parsed.data
    else:
        assert read == parsed


@pytest.mark.parametrize("kind", UPLOADS)
def test_a_chunk_is_a_view_on_the_bytes_grpc_handed_up(kind: type[Message]) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB, a wire chunk
    raw = kind(data=chunk).SerializeToString()
    read = upload_reader(kind)(raw)
    assert isinstance(read, DataPart) and read.WhichOneof("part") == "data"
    assert read.data.obj is raw and read.data == chunk


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(UPLOADS), chunk=st.binary(max_size=3000))
def test_any_chunk_reads_as_protobuf_reads_it(kind: type[Message], chunk: bytes) -> None:
    raw = kind(data=chunk).SerializeToString()
    assert isinstance(upload_reader(kind)(raw), DataPart)
    same_reading(kind, raw)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), kind=st.sampled_from(UPLOADS), chunk=st.binary(max_size=200))
def test_other_messages_and_concatenations_read_as_protobuf_reads_them(
    data: st.DataObject, kind: type[Message], chunk: bytes
) -> None:
    """A message of the data field and another part (in either order: the last one set wins),
    or of no data, is left to protobuf."""
    other = data.draw(others(kind)).SerializeToString()
    with_data = kind(data=chunk).SerializeToString()
    for raw in (other, with_data + other, other + with_data, with_data + with_data):
        same_reading(kind, raw)


@pytest.mark.parametrize("kind", UPLOADS)
@pytest.mark.parametrize("width", range(1, 11))
def test_a_length_written_in_any_number_of_bytes_reads_as_protobuf_reads_it(
    kind: type[Message], width: int
) -> None:
    """A varint may pad a length with continuation bytes; protobuf takes at most five."""
    padded = [5] if width == 1 else [0x85, *[0x80] * (width - 2), 0x00]
    tag = kind.DESCRIPTOR.fields_by_name["data"].number << 3 | 2
    same_reading(kind, bytes([tag, *padded]) + b"hello")


@settings(max_examples=2000, deadline=None)
@given(kind=st.sampled_from(UPLOADS), raw=st.binary(max_size=64))
def test_garbage_is_refused_as_protobuf_refuses_it(kind: type[Message], raw: bytes) -> None:
    same_reading(kind, raw)


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from(UPLOADS), chunk=st.binary(min_size=1, max_size=300), cut=st.data())
def test_a_cut_or_overlong_chunk_is_not_taken_as_a_chunk(
    kind: type[Message], chunk: bytes, cut: st.DataObject
) -> None:
    raw = kind(data=chunk).SerializeToString()
    short = raw[: cut.draw(st.integers(min_value=1, max_value=len(raw) - 1))]
    for bad in (short, raw + b"\x00"):
        same_reading(kind, bad)
        assert not isinstance(_read_or_none(kind, bad), DataPart)


def _read_or_none(kind: type[Message], raw: bytes) -> Message | DataPart | None:
    try:
        return upload_reader(kind)(raw)
    except DecodeError:
        return None
