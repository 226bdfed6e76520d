"""Random and mutated gRPC messages for every method a fedstock server answers, sent raw.

Written from the .proto contract: each method has a valid seed message, and each message sent
is either random bytes or the seed with bytes flipped, cut, repeated or given a lying length.
Calls go past every client-side check (the bytes are sent as they are), from a few threads.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from common.tensors import Payload
from common.wire import SESSION_METADATA_KEY
from proto.fedstock.v1 import federation_pb2 as pb

FEDERATION = "/fedstock.v1.Federation/"
UPDATE = Payload.encode({"xtx": np.eye(9), "xty": np.zeros(9)})
SEEDS: dict[str, list[bytes]] = {
    FEDERATION + "Join": [pb.JoinRequest(province="hubei", rows=1000).SerializeToString()],
    FEDERATION + "GetTask": [pb.TaskRequest().SerializeToString()],
    FEDERATION + "Submit": [
        pb.SubmitChunk(
            outcome=pb.Outcome(
                task_id="r1-train-hubei-00000000",
                round=1,
                kind=pb.TASK_KIND_TRAIN,
                num_examples=50,
                metrics={"train_mse": 0.1},
                parameters=UPDATE.header,
            )
        ).SerializeToString(),
        pb.SubmitChunk(data=UPDATE.blob[:512]).SerializeToString(),
    ],
    "/grpc.health.v1.Health/Check": [health_pb2.HealthCheckRequest().SerializeToString()],
    "/grpc.health.v1.Health/Watch": [health_pb2.HealthCheckRequest().SerializeToString()],
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": [
        reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    ],
}
STREAMING_REQUESTS = {FEDERATION + "Submit", next(m for m in SEEDS if "Reflection" in m)}
STREAMING_REPLIES = {FEDERATION + "GetTask", "/grpc.health.v1.Health/Watch"}


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """Random bytes, or `seed` flipped, cut, repeated, or with a length prefix that lies."""
    choice = rng.randrange(6)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 512))
    data = bytearray(seed)
    if choice == 1 and data:
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 2:
        data = data[: rng.randrange(len(data) + 1)]
    elif choice == 3:
        data = data * rng.randrange(2, 6)
    elif choice == 4:  # a length-delimited field claiming gigabytes
        data = bytearray(b"\x0a\xff\xff\xff\xff\x0f") + data
    else:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randrange(1, 64))
    return bytes(data)


class Fuzzer:
    """Sends mutated messages from `threads` threads; counts messages and answer codes."""

    def __init__(
        self,
        channel: grpc.Channel,
        seed: int,
        threads: int = 6,
        methods: tuple[str, ...] = tuple(SEEDS),
    ) -> None:
        self.channel, self.seed, self.threads, self.methods = channel, seed, threads, methods
        self.codes: Counter[str] = Counter()
        self.sent = 0
        self._lock = threading.Lock()

    def send(self, messages: int, stop: threading.Event | None = None) -> None:
        target = self.sent + messages
        workers = [
            threading.Thread(
                target=self._work, args=(random.Random(self.seed * 1000 + i), target, stop)
            )
            for i in range(self.threads)
        ]
        self.seed += 1
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _work(self, rng: random.Random, target: int, stop: threading.Event | None) -> None:
        while self.sent < target and not (stop and stop.is_set()):
            method = rng.choice(self.methods)
            seeds = SEEDS[method]
            requests = [mutate(rng.choice(seeds), rng) for _ in range(rng.randrange(1, 4))]
            if method not in STREAMING_REQUESTS:
                requests = requests[:1]
            code = self._call(method, requests, rng)
            with self._lock:
                self.sent += len(requests)
                self.codes[code] += 1

    def _call(self, method: str, requests: list[bytes], rng: random.Random) -> str:
        # A made-up session mostly; the server must refuse it before reading further.
        metadata = ((SESSION_METADATA_KEY, rng.choice(["", "x" * rng.randrange(1, 200)])),)
        kind = (method in STREAMING_REQUESTS, method in STREAMING_REPLIES)
        call = {
            (False, False): self.channel.unary_unary,
            (False, True): self.channel.unary_stream,
            (True, False): self.channel.stream_unary,
            (True, True): self.channel.stream_stream,
        }[kind](method)
        request = iter(requests) if kind[0] else requests[0]
        try:
            reply = call(request, timeout=120, metadata=metadata)
            if kind[1]:
                next(reply, None)  # a watch goes on: its first answer is enough
                reply.cancel()
            return "OK"
        except grpc.RpcError as error:
            return error.code().name


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid`, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")
