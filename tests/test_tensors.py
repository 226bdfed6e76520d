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
