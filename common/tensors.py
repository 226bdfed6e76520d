"""Named numpy arrays to and from the wire: raw little-endian bytes, dtype and shape.

No element is touched one by one: an array's buffer is written as it is and viewed again on
arrival, so a 300 MB model costs a copy, not a loop. Payloads travel as a header listing the
tensors followed by byte chunks small enough for any gRPC message limit.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from proto.fedstock.v1 import tensor_pb2 as pb

Arrays = dict[str, np.ndarray]

CHUNK_BYTES = 1 << 20

_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_INT8: np.dtype("i1"),
    pb.DTYPE_UINT8: np.dtype("u1"),
}
_CODES: dict[str, int] = {dtype.str.lstrip("<|"): code for code, dtype in _DTYPES.items()}


class Serializable(Protocol):
    """A protobuf message, as far as `Payload.frames` needs one."""

    def SerializeToString(self) -> bytes: ...


class PayloadError(ValueError):
    """A payload that does not describe itself honestly: bad dtype, size or chunking."""


def _little_endian(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    code = _CODES.get(array.dtype.str.lstrip("<>|"))
    if code is None:
        raise PayloadError(f"dtype {array.dtype} cannot travel; use one of {sorted(_CODES)}")
    return np.asarray(array, dtype=_DTYPES[code], order="C")


def _spec(name: str, array: np.ndarray) -> pb.TensorSpec:
    code = _CODES[array.dtype.str.lstrip("<|")]
    return pb.TensorSpec(name=name, dtype=code, shape=list(array.shape))


def spec_nbytes(spec: pb.TensorSpec) -> int:
    """Bytes a tensor of this spec occupies; rejects unknown dtypes and negative dimensions."""
    dtype = _DTYPES.get(spec.dtype)
    if dtype is None:
        raise PayloadError(f"tensor {spec.name!r} has unknown dtype code {spec.dtype}")
    if any(d < 0 for d in spec.shape):
        raise PayloadError(f"tensor {spec.name!r} has a negative dimension {list(spec.shape)}")
    # numpy refuses even an empty array whose other dimensions multiply past its index range.
    if math.prod(d for d in spec.shape if d) * dtype.itemsize >= 1 << 63:
        raise PayloadError(f"tensor {spec.name!r} has a shape too large for memory")
    return math.prod(spec.shape) * dtype.itemsize


def to_tensor(name: str, array: np.ndarray) -> pb.Tensor:
    """A small array carried whole in one message."""
    array = _little_endian(array)
    return pb.Tensor(spec=_spec(name, array), data=array.tobytes())


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    expected = spec_nbytes(tensor.spec)
    if len(tensor.data) != expected:
        raise PayloadError(
            f"tensor {tensor.spec.name!r} carries {len(tensor.data)} bytes, "
            f"its spec says {expected}"
        )
    dtype = _DTYPES[tensor.spec.dtype]
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.spec.shape)).copy()


@dataclass(frozen=True)
class Payload:
    """Arrays encoded once, ready to be cut into chunks for any number of receivers."""

    header: pb.ParametersHeader
    blob: bytes
    # Serialized chunk messages shared by the streams sending them now (`frames`).
    _frames: dict[type, _Frames] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _framing: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @classmethod
    def encode(cls, arrays: Mapping[str, np.ndarray]) -> Payload:
        prepared = {name: _little_endian(a) for name, a in arrays.items()}
        header = pb.ParametersHeader(
            tensors=[_spec(name, a) for name, a in prepared.items()],
            total_bytes=sum(a.nbytes for a in prepared.values()),
        )
        return cls(header, b"".join(a.data for a in prepared.values()))

    def digest(self) -> str:
        return payload_digest(self.header, self.blob)

    @property
    def fits_one_chunk(self) -> bool:
        """Small enough to travel inside its task or outcome message (contract version 3)."""
        return len(self.blob) <= CHUNK_BYTES

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        view = memoryview(self.blob)
        for start in range(0, len(view), chunk_bytes):
            yield bytes(view[start : start + chunk_bytes])

    def frames(self, message: Callable[..., Serializable]) -> Iterator[bytes]:
        """Each chunk as the serialized `message(data=chunk)`, the very bytes protobuf writes
        for it, shared by every stream sending this payload at the same time: nine streams
        cost one serialization of each chunk, not nine. A frame is let go once every stream
        that asked before it was made has taken it (or was closed), so the payload holds only
        the frames between its slowest and fastest sender, and none once they are done; a
        stream that asks later makes again what it needs."""
        count = math.ceil(len(self.blob) / CHUNK_BYTES)
        with self._framing:
            shared = self._frames.setdefault(message, _Frames([None] * count, [0] * count))
            shared.wanted[:] = [w + 1 for w in shared.wanted]
        return _Sending(self, message, shared)

    @property
    def frames_held(self) -> int:
        """Serialized chunks this payload holds now, of every message type (see `frames`)."""
        with self._framing:
            return sum(f is not None for shared in self._frames.values() for f in shared.made)


@dataclass
class _Frames:
    """One message type's frames of a payload: each made once (`made`) and kept while a stream
    sending the payload has yet to take it (`wanted` counts them)."""

    made: list[bytes | None]
    wanted: list[int]

    def give(self, index: int) -> None:
        """One stream is done with frame `index`; the last lets it go."""
        self.wanted[index] -= 1
        if self.wanted[index] == 0:
            self.made[index] = None


class _Sending(Iterator[bytes]):
    """One stream's pass over a payload's shared frames (`Payload.frames`). Closed early, or
    dropped unfinished (a stream that broke off), it gives back the frames it had yet to take."""

    def __init__(self, payload: Payload, message: Callable[..., Serializable], shared: _Frames):
        self._payload, self._message, self._shared = payload, message, shared
        self._next = 0

    def __next__(self) -> bytes:
        shared, index = self._shared, self._next
        if index >= len(shared.made):
            raise StopIteration
        with self._payload._framing:
            frame = shared.made[index]
            if frame is None:
                start = index * CHUNK_BYTES
                chunk = self._payload.blob[start : start + CHUNK_BYTES]
                frame = shared.made[index] = self._message(data=chunk).SerializeToString()
            shared.give(index)
            self._next += 1
        return frame

    def close(self) -> None:
        with self._payload._framing:
            for index in range(self._next, len(self._shared.made)):
                self._shared.give(index)
            self._next = len(self._shared.made)

    def __del__(self) -> None:
        self.close()


class PayloadReceiver:
    """Rebuilds arrays from a header and its chunks, refusing anything over `max_bytes`.

    Memory grows with the bytes that arrive, never with the bytes announced: a header that
    promises gigabytes costs nothing until they are sent (the server admits them first, see
    server/admission.py).
    """

    def __init__(self, header: pb.ParametersHeader, max_bytes: int) -> None:
        sizes = [spec_nbytes(spec) for spec in header.tensors]
        names = [spec.name for spec in header.tensors]
        if len(set(names)) != len(names):
            raise PayloadError(f"tensor names repeat: {names}")
        if sum(sizes) != header.total_bytes:
            raise PayloadError(
                f"header says {header.total_bytes} bytes but its tensors need {sum(sizes)}"
            )
        if header.total_bytes > max_bytes:
            raise PayloadError(
                f"payload of {header.total_bytes} bytes exceeds the limit of {max_bytes} bytes"
            )
        self._header = header
        self._sizes = sizes
        self._total = header.total_bytes
        self._buffer = bytearray()

    @property
    def received(self) -> int:
        return len(self._buffer)

    @property
    def announced(self) -> int:
        return self._total

    @property
    def complete(self) -> bool:
        return self.received == self._total

    def add(self, chunk: bytes | memoryview) -> None:
        if len(self._buffer) + len(chunk) > self._total:
            raise PayloadError(f"chunks overrun the announced {self._total} bytes")
        self._buffer += chunk

    def digest(self) -> str:
        return payload_digest(self._header, self._buffer)

    def arrays(self) -> Arrays:
        if not self.complete:
            raise PayloadError(
                f"payload ended after {self.received} of {self._total} announced bytes"
            )
        arrays: Arrays = {}
        offset = 0
        for spec, size in zip(self._header.tensors, self._sizes, strict=True):
            dtype = _DTYPES[spec.dtype]
            flat = np.frombuffer(
                self._buffer, dtype=dtype, count=size // dtype.itemsize, offset=offset
            )
            arrays[spec.name] = flat.reshape(tuple(spec.shape))
            offset += size
        return arrays


def payload_digest(header: pb.ParametersHeader, blob: bytes | bytearray) -> str:
    """SHA-256 over the tensor specs and their bytes: the same arrays always hash the same."""
    digest = hashlib.sha256(header.SerializeToString(deterministic=True))
    digest.update(blob)
    return digest.hexdigest()


def receive(header: pb.ParametersHeader, chunks: Iterable[bytes], max_bytes: int) -> Arrays:
    receiver = PayloadReceiver(header, max_bytes)
    for chunk in chunks:
        receiver.add(chunk)
    return receiver.arrays()
