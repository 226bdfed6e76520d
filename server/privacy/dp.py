"""Client-level differential privacy for FedAvg (DP-FedAvg, McMahan et al. 2018).

Central: the server clips each client's step from the global parameters to norm C, sums the
steps, adds N(0, σ²C²) to the sum and divides by the number of clients asked (a fixed
denominator: every client weighs the same, whatever its samples, so one client moves the
average by at most C/m). Local: clients clip and add the noise themselves (client/privacy.py)
and the server only averages. Privacy is accounted with Google's RDP accountant for the
Gaussian mechanism composed once per round with sampling rate 1: in the central mode a client
is added or removed (sensitivity C); in the local mode a client's data is replaced (2C).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import rdp

from common import vectors
from common.tensors import Arrays
from server.disclosure import entry
from server.strategy import ClientResult, FedAvg, Strategy

MODES = ("dp-central", "dp-local")


def _event(noise_multiplier: float, rounds: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), rounds
    )


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after `rounds` Gaussian releases of sensitivity 1 and noise `noise_multiplier`."""
    accountant = rdp.RdpAccountant()
    accountant.compose(_event(noise_multiplier, rounds))
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier that keeps `rounds` releases within (target, delta)."""
    return float(
        dp_accounting.calibrate_dp_mechanism(
            rdp.RdpAccountant, lambda sigma: _event(sigma, rounds), target, delta
        )
    )


@dataclass(frozen=True)
class DPSettings:
    mode: str
    clip: float
    noise_multiplier: float
    delta: float

    @property
    def sensitivity(self) -> float:
        """A release's sensitivity in units of C: replacing a client's data moves it by 2C."""
        return 2.0 if self.mode == "dp-local" else 1.0

    @classmethod
    def for_epsilon(
        cls, mode: str, clip: float, target: float, delta: float, rounds: int
    ) -> DPSettings:
        probe = cls(mode, clip, 1.0, delta)
        return cls(mode, clip, noise_for_epsilon(target, rounds, delta) * probe.sensitivity, delta)

    def epsilon(self, rounds: int) -> float:
        return epsilon(self.noise_multiplier / self.sensitivity, rounds, self.delta)


class DPFedAvg(Strategy):
    """`inner` FedAvg with clipped, noised steps; its checks and evaluation are kept."""

    def __init__(
        self, inner: FedAvg, settings: DPSettings, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__(inner.model_config)
        self.inner = inner
        self.settings = settings
        self.rng = rng or np.random.default_rng()
        self._asked = 0

    def configure_fit(self, server_round, parameters, provinces):
        self._asked = len(provinces)
        s = self.settings
        extra = (
            {"privacy": s.mode, "dp_clip": s.clip, "dp_noise_multiplier": s.noise_multiplier}
            if s.mode == "dp-local"
            else {}
        )
        plan = self.inner.configure_fit(server_round, parameters, provinces)
        return [replace(i, config={**i.config, **extra}) for i in plan]

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        self.inner.check_update(arrays, n_features)

    def aggregate_fit(self, server_round, results, failures, current):
        if self.settings.mode == "dp-local" or not results:
            return self.inner.aggregate_fit(server_round, results, failures, current)
        return self.central_average(results, current)

    def central_average(self, results: list[ClientResult], current: Arrays | None) -> Arrays:
        bound = self.settings.clip
        total = sum(vectors.clip(vectors.delta(r.arrays, current), bound) for r in results)
        total = total + self.rng.normal(0.0, self.settings.noise_multiplier * bound, total.shape)
        base = 0.0 if current is None else vectors.flatten(current)
        return vectors.unflatten(base + total / max(self._asked, len(results)), results[0].arrays)

    def configure_evaluate(self, server_round, parameters, provinces):
        return self.inner.configure_evaluate(server_round, parameters, provinces)

    def disclosure(self):
        s = self.settings
        noise = (
            f"Gaussian noise σ = {s.noise_multiplier:g}·C on C = {s.clip:g}, ε reported per round"
        )
        if s.mode == "dp-local":
            server = f"each province's step clipped and noised by the province ({noise})"
        else:
            server = (
                f"each province's update in the clear; it clips them and noises the sum ({noise})"
            )
        return {
            **self.inner.disclosure(),
            "updates": entry(server, "the noised global model after each round"),
        }

    def round_report(self, server_round: int) -> dict[str, Any]:
        s = self.settings
        return {
            "privacy": {
                "mode": s.mode,
                "epsilon": s.epsilon(server_round),
                "delta": s.delta,
                "clip": s.clip,
                "noise_multiplier": s.noise_multiplier,
            }
        }
