"""A province's side of secure aggregation: keys, encrypted shares, masked input, unmasking.

The protocol itself is common/secagg.py; this keeps one protocol client per round and turns
its messages into the tensors the server relays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common import secagg
from common.tensors import Arrays
from common.vectors import flatten, unflatten
from common.wire import ConfigScalar


def _indices(text: ConfigScalar) -> set[int]:
    return {int(i) for i in str(text).split(",") if i}


class SecAggClient:
    def __init__(self) -> None:
        self._round = 0
        self._client: secagg.Client | None = None
        self._relay: dict[int, bytes] = {}

    def _current(self, config: Mapping[str, ConfigScalar]) -> secagg.Client:
        if self._client is None or self._round != int(config["round"]):
            raise secagg.SecAggError("a secure-aggregation step arrived out of order")
        return self._client

    def keys(self, config: Mapping[str, ConfigScalar]) -> Arrays:
        """A fresh protocol client for this round; its two public keys."""
        encoding = secagg.Encoding(float(config["secagg_bound"]), int(config["secagg_clients"]))
        threshold = int(config["secagg_threshold"])
        self._round = int(config["round"])
        self._client = secagg.Client(int(config["secagg_index"]), encoding, threshold)
        self._relay = {}
        keys = b"".join(self._client.advertise())
        return {"keys": np.frombuffer(keys, dtype=np.uint8).reshape(2, 32).copy()}

    def shares(self, config: Mapping[str, ConfigScalar], adverts: Arrays) -> Arrays:
        """One encrypted row per client in the adverts' order (this client's own row empty)."""
        sealed = self._current(config).share(secagg.unpack_adverts(adverts))
        rows = np.zeros((len(adverts["index"]), secagg.SEALED_BYTES), dtype=np.uint8)
        for row, v in enumerate(adverts["index"]):
            if int(v) in sealed:
                rows[row] = np.frombuffer(sealed[int(v)], dtype=np.uint8)
        return {"shares": rows}

    def strip(self, parameters: Arrays) -> Arrays | None:
        """The global parameters without the shares relayed to this client, which it keeps."""
        senders, rows = parameters[secagg.SENDERS], parameters[secagg.SHARES]
        self._relay = {int(u): row.tobytes() for u, row in zip(senders, rows, strict=True)}
        rest = {k: v for k, v in parameters.items() if k not in (secagg.SENDERS, secagg.SHARES)}
        return rest or None

    def mask(self, update: Arrays, num_examples: int, config: Mapping[str, ConfigScalar]) -> Arrays:
        """The sample-weighted update and its weight, masked, as int64 tensors of its shapes."""
        weighted = {k: v * num_examples for k, v in update.items()}
        weighted[secagg.WEIGHT] = np.array(float(num_examples))
        masked = self._current(config).masked_input(flatten(weighted), self._relay)
        return unflatten(masked.view(np.int64), weighted)

    def unmask(self, config: Mapping[str, ConfigScalar]) -> Arrays:
        survivors = _indices(config["secagg_survivors"])
        dropped = _indices(config["secagg_dropped"])
        reply = self._current(config).unmask(survivors, dropped)
        order = sorted(reply)
        rows = b"".join(reply[u].to_bytes(secagg.SHARE_BYTES) for u in order)
        shares = np.frombuffer(rows, dtype=np.uint8).reshape(len(order), secagg.SHARE_BYTES)
        return {"for": np.array(order, dtype=np.int64), "shares": shares.copy()}
