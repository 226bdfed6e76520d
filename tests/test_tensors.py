import threading
import tracemalloc

import numpy as np
import pytest

from common.tensors import (
    Payload,
    PayloadError,
    PayloadReceiver,
    from_tensor,
    receive,
    to_tensor,
)
from proto.fedstock.v1 import federation_pb2
from proto.fedstock.v1 import tensor_pb2 as pb


def roundtrip(arrays, chunk_bytes=7):
    payload = Payload.encode(arrays)
    return receive(payload.header, payload.chunks(chunk_bytes), max_bytes=1 << 30)


def test_every_dtype_and_shape_survives_chunking():
    rng = np.random.default_rng(0)
    arrays = {
        "f8": rng.normal(size=(3, 4)),
        "f4": rng.normal(size=5).astype(np.float32),
        "f2": rng.normal(size=2).astype(np.float16),
        "i8": np.arange(6, dtype=np.int64).reshape(2, 3),
        "i4": np.arange(3, dtype=np.int32),
        "i1": np.array([-1, 2], dtype=np.int8),
        "u1": np.array([255], dtype=np.uint8),
        "scalar": np.float64(3.5),
        "empty": np.zeros((0, 3)),
    }
    back = roundtrip(arrays)
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == np.asarray(array).dtype.newbyteorder("<")
        assert back[name].shape == np.shape(array)
        np.testing.assert_array_equal(back[name], array)


def test_big_endian_and_strided_arrays_travel_as_little_endian_values():
    big = np.arange(4, dtype=">f8")
    strided = np.arange(10.0)[::2]
    back = roundtrip({"big": big, "strided": strided})
    np.testing.assert_array_equal(back["big"], [0, 1, 2, 3])
    np.testing.assert_array_equal(back["strided"], [0, 2, 4, 6, 8])


def test_unsupported_dtype_is_refused():
    with pytest.raises(PayloadError, match="cannot travel"):
        Payload.encode({"c": np.array([1 + 2j])})


def test_small_tensor_roundtrip_and_size_mismatch():
    tensor = to_tensor("w", np.array([1.0, 2.0]))
    np.testing.assert_array_equal(from_tensor(tensor), [1.0, 2.0])
    tensor.data = tensor.data[:-1]
    with pytest.raises(PayloadError, match="carries 15 bytes"):
        from_tensor(tensor)


def header(total, *specs):
    return pb.ParametersHeader(tensors=[pb.TensorSpec(**s) for s in specs], total_bytes=total)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (header(8, {"name": "a", "dtype": 99, "shape": [1]}), "unknown dtype"),
        (header(8, {"name": "a", "dtype": pb.DTYPE_FLOAT64, "shape": [-1]}), "negative"),
        (header(9, {"name": "a", "dtype": pb.DTYPE_FLOAT64, "shape": [1]}), "need 8"),
        (
            header(
                16, {"name": "a", "dtype": 1, "shape": [1]}, {"name": "a", "dtype": 1, "shape": [1]}
            ),
            "repeat",
        ),
        (header(1 << 62, {"name": "a", "dtype": 1, "shape": [1 << 59]}), "exceeds the limit"),
    ],
)
def test_dishonest_headers_are_refused(bad, message):
    with pytest.raises(PayloadError, match=message):
        PayloadReceiver(bad, max_bytes=1 << 20)


def test_overrun_and_short_payloads_are_refused():
    h = header(8, {"name": "a", "dtype": pb.DTYPE_FLOAT64, "shape": [1]})
    receiver = PayloadReceiver(h, max_bytes=100)
    with pytest.raises(PayloadError, match="overrun"):
        receiver.add(b"x" * 9)
    receiver = PayloadReceiver(h, max_bytes=100)
    receiver.add(b"x" * 4)
    with pytest.raises(PayloadError, match="after 4 of 8"):
        receiver.arrays()


def test_memory_grows_with_the_bytes_that_arrive_not_with_those_announced():
    header = pb.ParametersHeader(
        tensors=[pb.TensorSpec(name="x", dtype=pb.DTYPE_UINT8, shape=[64 << 20])],
        total_bytes=64 << 20,
    )
    tracemalloc.start()
    try:
        receiver = PayloadReceiver(header, max_bytes=1 << 30)
        receiver.add(b"x" * 4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # 64 MiB announced, 4 KiB sent


def test_frames_are_each_chunk_as_its_message_serializes():
    """The bytes a stream sends for a payload's chunks are protobuf's own for
    `message(data=chunk)`, so a client reading the published .proto parses them."""
    payload = Payload.encode({"coef": np.arange(300_000.0)})  # 2.4 MB: three chunks
    for message in (federation_pb2.SessionDown, federation_pb2.TaskChunk):
        frames = list(payload.frames(message))
        assert frames == [message(data=c).SerializeToString() for c in payload.chunks()]
        assert b"".join(message.FromString(f).data for f in frames) == payload.blob
    assert payload.frames_held == 0


def test_streams_sending_at_once_share_each_frame_and_let_it_go_once_all_took_it():
    payload = Payload.encode({"coef": np.arange(300_000.0)})
    fast, slow = (
        payload.frames(federation_pb2.SessionDown),
        payload.frames(federation_pb2.SessionDown),
    )
    first = next(fast)
    assert next(slow) is first  # made once, for both
    assert payload.frames_held == 0  # both took it: let go
    second = next(fast)
    assert payload.frames_held == 1  # kept for the slow stream
    assert next(slow) is second and payload.frames_held == 0
    slow.close()  # a stream that breaks off wants no more
    last = next(fast)
    assert payload.frames_held == 0 and next(fast, None) is None
    # A stream that starts after the others are done makes the same bytes again.
    assert list(payload.frames(federation_pb2.SessionDown)) == [first, second, last]
    assert payload.frames_held == 0


def test_many_streams_starting_together_get_the_same_frame_objects():
    payload = Payload.encode({"coef": np.arange(300_000.0)})
    ready = threading.Barrier(8)
    went: list[list[bytes]] = []
    senders = [payload.frames(federation_pb2.SessionDown) for _ in range(8)]

    def send(frames) -> None:
        ready.wait()
        went.append(list(frames))

    threads = [threading.Thread(target=send, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(a is b for sent in went for a, b in zip(sent, went[0], strict=True))
    assert payload.frames_held == 0
