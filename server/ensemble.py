"""Ensembles as global models: the union of the members (trees, SVRs) the provinces send.

Each province has a share of the global ensemble (for a forest, in proportion to its training
rows). The share is copied out of an update the moment it arrives and the rest is dropped, so
the server holds the global ensemble and the updates in flight, never every update at once.
One round suffices; each further round grows a fresh ensemble that replaces the last.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from common.model_settings import MemberSeed
from common.models.ensemble import Member, MemberCodec
from common.models.forest import shares
from common.preprocess import GlobalStatistics
from common.settings import RoundNumber
from common.tensors import Arrays
from common.wire import ConfigScalar
from server.strategy import ClientResult, Instruction, Strategy

log = logging.getLogger("fedstock.server")

# Members each province contributes, from its training rows.
Quotas = Callable[[dict[str, int]], dict[str, int]]


def forest_quotas(total: int, allocation: str) -> Quotas:
    """`total` trees shared by training rows ('proportional') or evenly ('equal')."""

    def quotas(samples: dict[str, int]) -> dict[str, int]:
        weights = list(samples.values()) if allocation == "proportional" else [1] * len(samples)
        return dict(zip(samples, shares(total, weights), strict=True))

    return quotas


def one_each(samples: dict[str, int]) -> dict[str, int]:
    return dict.fromkeys(samples, 1)


class EnsembleUnion(Strategy):
    def __init__(
        self,
        model_config: Mapping[str, ConfigScalar],
        codec: MemberCodec,
        quotas: Quotas,
        grow_share: Callable[[int], Mapping[str, ConfigScalar]] | None = None,
    ) -> None:
        """`grow_share`: the config that has a province make `share` members, when each should
        make only its share instead of the configured count (the rest would be thrown away)."""
        super().__init__(model_config)
        self._codec = codec
        self._quotas = quotas
        self._grow_share = grow_share
        self._samples: dict[str, int] = {}
        self._share: dict[str, int] = {}
        self._kept: dict[str, list[Member]] = {}
        self._lock = threading.Lock()
        self._report: dict[str, Any] = {}

    def prepare(self, statistics: GlobalStatistics, train_samples: Mapping[str, int]) -> None:
        self._samples = dict(train_samples)

    def replay_refusal(self) -> str | None:
        return None  # a coalition's model is the global model's members from its provinces

    def configure_fit(
        self, server_round: int, parameters: Arrays | None, provinces: list[str]
    ) -> list[Instruction]:
        """Only provinces with a known share train, each with its own seed; nothing is sent."""
        known = sorted(p for p in provinces if self._samples.get(p, 0) > 0)
        if len(known) < len(provinces):
            log.warning(
                "round %d: %s sent no statistics and get no share of the ensemble",
                server_round,
                ", ".join(sorted(set(provinces) - set(known))),
            )
        self._share = self._quotas({p: self._samples[p] for p in known}) if known else {}
        with self._lock:
            self._kept = {}
        return [
            Instruction(
                p,
                {
                    **self.model_config,
                    **RoundNumber(server_round).to_config(),
                    **MemberSeed(1000 * server_round + i).to_config(),
                    **(self._grow_share(self._share[p]) if self._grow_share else {}),
                },
                None,
            )
            for i, p in enumerate(known)
        ]

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        self._codec.unpack(arrays, n_features)

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        kept = self._codec.take(result.arrays, self._share.get(result.province, 0))
        with self._lock:
            self._kept[result.province] = kept
        log.info(
            "round %d: kept %d of %s's %d %ss",
            server_round,
            len(kept),
            result.province,
            len(result.arrays) // len(self._codec.fields),
            self._codec.kind,
        )
        return replace(result, arrays={})

    def aggregate_fit(self, server_round, results, failures, current):
        with self._lock:
            kept, self._kept = self._kept, {}
        provinces = sorted(r.province for r in results)
        self._report = {"members": {p: len(kept.get(p, [])) for p in provinces}}
        members = [member for p in provinces for member in kept.get(p, [])]
        return self._codec.pack(members) if members else None

    def round_report(self, server_round: int) -> dict[str, Any]:
        return self._report
