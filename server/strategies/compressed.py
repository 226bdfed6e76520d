"""Compressed updates (`--compression`): decoded as they arrive, before any check or aggregate.

Clients send their step from the global weights (common/compression.py); this wrapper adds
it back to the weights it sent, so the strategy inside sees ordinary updates. The first round
has no global weights to step from, so its updates travel whole. Bytes received are reported
with each round.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from common import compression
from common.models.checks import UpdateError
from common.tensors import Arrays
from common.vectors import flatten, unflatten
from server.strategy import ClientResult, Strategy


class Compressed(Strategy):
    def __init__(self, inner: Strategy, method: str, topk_fraction: float) -> None:
        config = {"compression": method, "topk_fraction": topk_fraction}
        super().__init__({**inner.model_config, **config})
        self.inner, self.method, self.topk_fraction = inner, method, topk_fraction
        self.reference: Arrays | None = None
        self._bytes: dict[str, int] = {}
        self._lock = threading.Lock()

    def bind_phases(self, run):
        self.inner.bind_phases(run)

    def state(self):
        return self.inner.state()

    def restore(self, state):
        self.inner.restore(state)

    def configure_fit(self, server_round, parameters, provinces):
        self.reference = parameters
        with self._lock:
            self._bytes = {}
        return [
            replace(i, config={**i.config, **self.model_config})
            for i in self.inner.configure_fit(server_round, parameters, provinces)
        ]

    def decode(self, arrays: Arrays) -> Arrays:
        if self.reference is None:
            return arrays
        base = flatten(self.reference)
        try:
            step = compression.decode(arrays, self.method, len(base))
        except compression.CompressionError as error:
            raise UpdateError(str(error)) from None
        return unflatten(base + step, self.reference)

    def check_update(self, arrays, n_features):
        self.inner.check_update(self.decode(arrays), n_features)

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        with self._lock:
            self._bytes[result.province] = sum(a.nbytes for a in result.arrays.values())
        decoded = ClientResult(
            result.province,
            result.num_examples,
            result.metrics,
            self.decode(result.arrays),
            result.digest,
        )
        return self.inner.accept_fit(server_round, decoded)

    def aggregate_fit(self, server_round, results, failures, current):
        return self.inner.aggregate_fit(server_round, results, failures, current)

    def configure_evaluate(self, server_round, parameters, provinces):
        return self.inner.configure_evaluate(server_round, parameters, provinces)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def round_report(self, server_round):
        with self._lock:
            received = sum(self._bytes.values())
        return {**self.inner.round_report(server_round), "update_bytes": received}
