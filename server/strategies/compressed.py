"""Compressed updates (`--compression`): decoded as they arrive, before any check or aggregate.

Clients send their step from the global weights (common/compression.py); this wrapper adds
it back to the weights it sent for that round, so the strategy inside sees ordinary updates.
The first round has no global weights to step from, so its updates travel whole. Bytes
received are reported with each round. Asynchronous tasks of one run start from different
versions at once, so the weights sent are kept by round.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from common import compression
from common.models.checks import UpdateError
from common.protection import Compression
from common.tensors import Arrays
from common.vectors import flatten, unflatten
from server.strategy import ClientResult, Strategy


class Compressed(Strategy):
    def __init__(self, inner: Strategy, method: str, topk_fraction: float) -> None:
        super().__init__({**inner.model_config, **Compression(method, topk_fraction).to_config()})
        self.inner, self.method, self.topk_fraction = inner, method, topk_fraction
        # The weights each round's tasks started from; the newest also checks updates' form,
        # which is the same whatever version they step from.
        self.references: dict[int, Arrays | None] = {}
        self.reference: Arrays | None = None
        self._bytes: list[int] = []
        self._lock = threading.Lock()

    def bind_phases(self, run):
        super().bind_phases(run)
        self.inner.bind_phases(run)

    def prepare(self, statistics, train_samples):
        self.inner.prepare(statistics, train_samples)

    def state(self):
        return self.inner.state()

    def restore(self, state):
        self.inner.restore(state)

    def configure_fit(self, server_round, parameters, provinces):
        with self._lock:
            self.references[server_round] = self.reference = parameters
        return [
            replace(i, config={**i.config, **self.model_config})
            for i in self.inner.configure_fit(server_round, parameters, provinces)
        ]

    def decode(self, arrays: Arrays, reference: Arrays | None) -> Arrays:
        if reference is None:
            return arrays
        base = flatten(reference)
        try:
            step = compression.decode(arrays, self.method, len(base))
        except compression.CompressionError as error:
            raise UpdateError(str(error)) from None
        return unflatten(base + step, reference)

    def check_update(self, arrays, n_features):
        self.inner.check_update(self.decode(arrays, self.reference), n_features)

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        with self._lock:
            self._bytes.append(sum(a.nbytes for a in result.arrays.values()))
            reference = self.references[server_round]
        decoded = replace(result, arrays=self.decode(result.arrays, reference))
        return self.inner.accept_fit(server_round, decoded)

    def fold(self, server_round, result, current):
        return self.inner.fold(server_round, result, current)  # the update is decoded by now

    def aggregate_fit(self, server_round, results, failures, current):
        return self.inner.aggregate_fit(server_round, results, failures, current)

    def configure_evaluate(self, server_round, parameters, provinces):
        return self.inner.configure_evaluate(server_round, parameters, provinces)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def replay_refusal(self):
        return self.inner.replay_refusal()  # compression changes only how updates travel

    def disclosure(self):
        inner = self.inner.disclosure()
        updates = inner["updates"]
        server = f"{updates['server']}, as its step from the global model, {self.method}-compressed"
        return {**inner, "updates": {**updates, "server": server}}

    def round_report(self, server_round):
        """The bytes of the updates accepted since the last report."""
        with self._lock:
            received, self._bytes = sum(self._bytes), []
        return {**self.inner.round_report(server_round), "update_bytes": received}
