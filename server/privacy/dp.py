"""Client-level differential privacy for FedAvg (DP-FedAvg, McMahan et al. 2018), and the
accountant that counts every release a run makes.

Central: the server clips each client's step from the global parameters to norm C, sums the
steps, adds N(0, σ²C²) to the sum and divides by the number of clients asked (a fixed
denominator: every client weighs the same, whatever its samples, so one client moves the
average by at most C/m). Local: clients clip and add the noise themselves (client/privacy.py)
and the server only averages. The noise comes from the operating system's secure generator
(common/noise.py).

Every noisy release counts, not only the final training's rounds: model selection trains
once per grid point and fold, and each of those rounds releases a noisy sum too (with
`svm-c=1,10` and 5 folds, 3 rounds make 2·5·3 + 3 = 33 releases). One `Accountant` per run
composes them all with Google's `dp-accounting` (RDP or PLD, `--dp-accountant`), each a
Gaussian mechanism with sampling rate 1: in the central mode a client is added or removed
(sensitivity C); in the local mode a client's data is replaced (2C). Each evaluation is a
release too: each province's MSE, clipped per row to B (sensitivity B), noised at the same
multiplier, by the province (local) or by the server before anything holds it (central, where
the server is trusted with the clear score but releases only the noised one; the training MSE
it drops unreleased). The statistics (n, Σz, Σzzᵀ) are one release too: every row clipped
into public bounds, noised by each province (local) or by the server on their sum (central) in
the bounds' unit space, with one row replaced as the unit (common/dpstats.py). In the next-day
setting the time split's rows per year, then per day, are two more such releases, noised and
counted alike (common/dpstats.py), and the cutoff is agreed from their noised sums. A release
that left without noise would be counted apart, as one no finite ε covers, and the report
would say so; none does now.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from common import dpbounds, dpstats, forecast, vectors
from common.dpbounds import Ranges
from common.forecast import noised_mse as noised
from common.models.checks import UpdateError
from common.noise import SecureRandom
from common.preprocess import GlobalStatistics
from common.protection import DPNoise, DPScoring, DPStatistics, Protection
from common.settings import DayCounts
from common.tensors import Arrays
from server.checks import check_declared_count
from server.disclosure import BINNED_DATE_COUNTS, CUTOFF, SCALER, entry
from server.folding import Folding
from server.strategy import ClientResult, FedAvg, Strategy, checked_sums

if TYPE_CHECKING:
    import dp_accounting

MODES = ("dp-central", "dp-local")
# dp-accounting (and the SciPy under it) costs a process a tenth of a second to import, so it
# is imported by the runs that account, when they first do.
ACCOUNTANTS = ("rdp", "pld")


def _accountant(kind: str) -> Callable[[], dp_accounting.PrivacyAccountant]:
    from dp_accounting import pld, rdp

    return {"rdp": rdp.RdpAccountant, "pld": pld.PLDAccountant}[kind]


def _event(noise_multiplier: float, releases: int) -> dp_accounting.DpEvent:
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), releases
    )


def epsilon(noise_multiplier: float, releases: int, delta: float, kind: str = "rdp") -> float:
    """ε after `releases` Gaussian releases of sensitivity 1 and noise `noise_multiplier`."""
    accountant = _accountant(kind)()
    accountant.compose(_event(noise_multiplier, releases))
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target: float, releases: int, delta: float, kind: str = "rdp") -> float:
    """The smallest noise multiplier that keeps `releases` releases within (target, delta)."""
    import dp_accounting

    return float(
        dp_accounting.calibrate_dp_mechanism(
            _accountant(kind), lambda sigma: _event(sigma, releases), target, delta
        )
    )


def planned_releases(rounds: int, folds: int, candidates: int, time_split: bool = False) -> int:
    """Noisy releases of a run: the time split's rows per year and per day (next-day setting),
    the statistics, then every round of every fold of every candidate and the rounds of the
    final training, each releasing its noised updates and its noised scores."""
    dates = 2 if time_split else 0
    return dates + 1 + rounds * (1 + folds * candidates) * 2


@dataclass(frozen=True)
class DPSettings:
    mode: str
    clip: float
    noise_multiplier: float
    delta: float
    accountant: str = "rdp"
    # B: the bound on each test row's squared error in the released MSE.
    score_clip: float = 1.0
    # The public range of each statistics column, in order (common/dpbounds.py).
    bounds: Ranges = field(default_factory=dict)

    @property
    def sensitivity(self) -> float:
        """A release's sensitivity in units of C: replacing a client's data moves it by 2C."""
        return 2.0 if self.mode == "dp-local" else 1.0

    @classmethod
    def for_epsilon(
        cls,
        mode: str,
        clip: float,
        target: float,
        delta: float,
        releases: int,
        accountant: str = "rdp",
        score_clip: float = 1.0,
        bounds: Ranges | None = None,
    ) -> DPSettings:
        """Noise calibrated so that `releases` noisy releases spend `target` ε in all."""
        probe = cls(mode, clip, 1.0, delta, accountant)
        sigma = noise_for_epsilon(target, releases, delta, accountant) * probe.sensitivity
        return cls(mode, clip, sigma, delta, accountant, score_clip, dict(bounds or {}))

    @property
    def unit_noise(self) -> float:
        """The noise multiplier in units of a release's sensitivity: the statistics' σ."""
        return self.noise_multiplier / self.sensitivity

    def epsilon(self, releases: int) -> float:
        return epsilon(self.unit_noise, releases, self.delta, self.accountant)


class Accountant:
    """Every release of one run, each noised and composed into ε.

    Shared by every strategy the run builds (model selection's candidates too), and kept in
    the checkpoint, so a resumed run goes on counting where it stopped. `clear` holds what a
    checkpoint from before every release was noised counted as leaving in the clear (central
    DP's metrics, rf's tree shapes): a run resumed from one still reports it.
    """

    def __init__(self, settings: DPSettings) -> None:
        self.settings = settings
        self.noisy: Counter[str] = Counter()
        self.clear: Counter[str] = Counter()

    def spend(self, what: str, releases: int = 1) -> None:
        """Releases noised by the run's mechanism (a sum of updates, each update, each tree's
        histograms)."""
        self.noisy[what] += releases

    def epsilon(self) -> float:
        return self.settings.epsilon(sum(self.noisy.values())) if self.noisy else 0.0

    def report(self) -> dict[str, Any]:
        s = self.settings
        spent = self.epsilon()
        report: dict[str, Any] = {
            "mode": s.mode,
            "accountant": s.accountant,
            "epsilon": spent if math.isfinite(spent) else None,
            "delta": s.delta,
            "clip": s.clip,
            "noise_multiplier": s.noise_multiplier,
            "noisy_releases": dict(sorted(self.noisy.items())),
            "clear_releases": dict(sorted(self.clear.items())),
        }
        if self.clear:
            report["note"] = (
                "epsilon covers the noisy releases only; "
                + ", ".join(sorted(self.clear))
                + " left the provinces without noise, which no finite epsilon covers"
            )
        return report

    # Checkpointed as arrays: each kind's release names and their counts.
    STATE = ("dp_noisy", "dp_noisy_count", "dp_clear", "dp_clear_count")

    def state(self) -> Arrays:
        arrays: Arrays = {}
        for name, counts in (("dp_noisy", self.noisy), ("dp_clear", self.clear)):
            arrays[name] = np.array(list(counts), dtype=str)
            arrays[f"{name}_count"] = np.array(list(counts.values()), dtype=np.int64)
        return arrays

    def restore(self, state: Arrays) -> None:
        self.noisy, self.clear = (
            Counter(dict(zip(state[n].tolist(), state[f"{n}_count"].tolist(), strict=True)))
            for n in ("dp_noisy", "dp_clear")
        )


class DPFedAvg(Strategy):
    """`inner` FedAvg with clipped, noised steps; its checks and evaluation are kept."""

    def __init__(
        self,
        inner: FedAvg,
        settings: DPSettings,
        rng: np.random.Generator | SecureRandom | None = None,
        accountant: Accountant | None = None,
    ) -> None:
        super().__init__(inner.model_config)
        self.inner = inner
        self.settings = settings
        self.rng = rng or SecureRandom()
        self.accountant = accountant or Accountant(settings)
        self._asked = 0
        self._folding = Folding()  # central DP's sum of clipped steps

    def state(self) -> Arrays:
        return {**self.inner.state(), **self.accountant.state()}

    def restore(self, state: Arrays) -> None:
        self.inner.restore({k: v for k, v in state.items() if k not in Accountant.STATE})
        if all(k in state for k in Accountant.STATE):
            self.accountant.restore(state)

    def prepare(self, statistics: GlobalStatistics, train_samples) -> None:
        self.inner.prepare(statistics, train_samples)

    def gather_statistics(self, provinces, shapes, check, plausible, config=None):
        """n, Σz and Σzzᵀ of rows clipped into the public bounds, noised once, counted when
        asked: by each province (local; the server checks each part's form, then the sum) or
        by the server on their sum (central). The sum is then made usable, and a price's
        move mapped back to the price (common/dpstats.py). The time split's day counts are
        one release each too (`gather_counts`)."""
        asked = DayCounts.sent(config) if config else None
        if asked is not None:
            return self.gather_counts(provinces, shapes, check, plausible, asked)
        s = self.settings
        if not s.bounds:
            raise ValueError("DP on the statistics needs each column's public range")
        local = s.mode == "dp-local"
        asked = DPStatistics(dpbounds.to_text(s.bounds), s.unit_noise if local else 0.0)
        extra = {**asked.to_config(), **(Protection(s.mode).to_config() if local else {})}
        self.accountant.spend("noised statistics")
        each = noised_part if local else plausible
        results, parts = super().gather_statistics(provinces, shapes, check, each, extra)
        if not parts:
            return results, []
        total = {name: sum(part[name] for part in parts) for name in parts[0]}
        lo, hi = dpbounds.limits(s.bounds)
        if not local:
            total = dpstats.noised(total, lo, hi, s.unit_noise, self.rng)
        bottom = dpstats.floor(
            s.unit_noise, len(lo), float(total["count"]), len(parts) if local else 1
        )
        sums = dpstats.usable(total, lo, hi, bottom)
        close = dpbounds.move_from(s.bounds)
        if close is not None:  # a price's move from today's close: the price's sums back
            sums = dpstats.from_move(sums, close)
        return checked_sums(results, sums, plausible)

    def count_noise(self, clients: int) -> float:
        """σ√2 on each count, once on the sum (central) or once by each province (local)."""
        releases = clients if self.settings.mode == "dp-local" else 1
        return dpstats.count_spread(self.settings.unit_noise, releases)

    def gather_counts(
        self,
        provinces: list[str],
        shapes: Mapping[str, tuple[int, ...]],
        check: Callable[[ClientResult], None],
        plausible: Callable[[Arrays, int], None],
        asked: DayCounts,
    ) -> tuple[list[ClientResult], list[Arrays]]:
        """The time split's rows per year or per day, noised once and counted when asked: by
        each province (local) or by the server on their sum (central), the sum rounded, the
        years' floored (common/dpstats.py); a province's own counts pass `plausible` when the server
        sees them in the clear (central). The row counts n, public, pass as they were."""
        s = self.settings
        local = s.mode == "dp-local"
        kind = asked.day_counts
        if local:
            asked = replace(asked, day_counts_noise=s.unit_noise)
        extra = {**asked.to_config(), **(Protection(s.mode).to_config() if local else {})}
        self.accountant.spend("noised date counts")
        each = counted_part if local else plausible
        results, parts = super().gather_statistics(provinces, shapes, check, each, extra)
        if not parts:
            return results, []
        total = sum(part[kind] for part in parts)
        if not local:
            total = dpstats.noised_counts(total, s.unit_noise, self.rng)
        if kind == "years":
            counts = dpstats.usable_years(total, s.unit_noise, len(parts) if local else 1)
        else:  # unclamped, so that their running sums stay unbiased
            counts = np.round(total)
        rows = float(sum(r.num_examples for r in results))
        return results, [{"count": np.array(rows), kind: counts}]

    def _noise(self) -> dict[str, Any]:
        """What a province is told to clip and noise its answer by under local DP."""
        s = self.settings
        return {**Protection(s.mode).to_config(), **DPNoise(s.clip, s.noise_multiplier).to_config()}

    def configure_fit(self, server_round, parameters, provinces):
        self._asked = len(provinces)
        extra = self._noise() if self.settings.mode == "dp-local" else {}
        plan = self.inner.configure_fit(server_round, parameters, provinces)
        # Under local DP each province answers with its noised update and no training MSE:
        # counted when asked for, so a refused or late answer counts too. (Central DP's noisy
        # sum is counted as it is made.)
        if self.settings.mode == "dp-local":
            self.accountant.spend("noised updates")
        return [replace(i, config={**i.config, **extra}) for i in plan]

    def accept_fit(self, server_round: int, result: ClientResult) -> ClientResult:
        """Under central DP a province's training MSE reaches the server in the clear; no noise
        covers it, so it is dropped on arrival and no record, summary or view releases it."""
        kept = super().accept_fit(server_round, result)
        if self.settings.mode == "dp-local" or forecast.TRAIN_MSE not in kept.metrics:
            return kept
        return replace(kept, metrics=forecast.without_train_mse(kept.metrics))

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        self.inner.check_update(arrays, n_features)

    def fold(self, server_round, result, current):
        """Local DP's updates are noised already: averaged as FedAvg's. Central DP clips each
        step to the bound as it counts (the update is whole then) and adds it, unweighted, into
        the round's sum, which is noised at the end."""
        if self.settings.mode == "dp-local":
            return self.inner.fold(server_round, result, current)
        self._folding.add(
            server_round, result.province, result.arrays, self._clip_scale(result, current), current
        )
        return replace(result, arrays={})

    def _clip_scale(self, result: ClientResult, current: Arrays | None) -> float:
        """What the update's step is multiplied by to be clipped (`vectors.clip`'s factor)."""
        norm = float(np.linalg.norm(vectors.delta(result.arrays, current)))
        return vectors.clip_factor(norm, self.settings.clip)

    def aggregate_fit(self, server_round, results, failures, current):
        if self.settings.mode == "dp-local" or not results:
            return self.inner.aggregate_fit(server_round, results, failures, current)
        self.accountant.spend("noisy sums of updates")
        return self.central_average(server_round, results, current)

    def central_average(
        self, server_round: int, results: list[ClientResult], current: Arrays | None
    ) -> Arrays:
        """The sum of the clipped steps (folded as they counted, or from the updates kept
        whole), noised, over the provinces asked, added onto the current model."""
        bound = self.settings.clip
        fold = self._folding.take(server_round, results)
        if fold is not None:  # its steps were taken from the model it folded them onto
            total, like, base = fold.total.result(), fold.like, fold.reference
        else:
            total = sum(vectors.clip(vectors.delta(r.arrays, current), bound) for r in results)
            like, base = results[0].arrays, None if current is None else vectors.flatten(current)
        total = total + self.rng.normal(0.0, self.settings.noise_multiplier * bound, total.shape)
        step = total / max(self._asked, len(results))
        return vectors.unflatten(step if base is None else base + step, like)

    def configure_evaluate(self, server_round, parameters, provinces):
        """Each province answers with its MSE clipped per row to B and nothing else: noised by
        the province (local, client/privacy.py) or, in the clear to the trusted server, noised
        by it in `aggregate_evaluate` before anything holds it (central). One more release at
        the updates' noise, counted when asked."""
        plan = self.inner.configure_evaluate(server_round, parameters, provinces)
        s = self.settings
        self.accountant.spend("noised scores")
        extra = DPScoring(s.score_clip, s.noise_multiplier).to_config()
        if s.mode == "dp-local":
            extra = {**Protection(s.mode).to_config(), **extra}
        return [replace(i, config={**i.config, **extra}) for i in plan]

    def aggregate_evaluate(self, server_round, results, failures):
        """The federation's MSE from each province's released one: under central DP the server
        releases each province's clipped MSE with N(0, (σ·B)²) (σ in units of the score's
        sensitivity B, as a province adds under local DP), and only that: the clear score and
        any other metric a province sent stay out of the evaluation and so of every record."""
        s = self.settings
        if s.mode != "dp-local":
            scale = s.unit_noise * s.score_clip
            results = [
                replace(r, metrics={"mse": noised(r.metrics["mse"], s.score_clip, scale, self.rng)})
                for r in results
                if "mse" in r.metrics
            ]
        return super().aggregate_evaluate(server_round, results, failures)

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
        disclosed = {
            **self.inner.disclosure(),
            "statistics": self.statistics_disclosure(),
            "updates": entry(server, "the noised global model after each round"),
        }
        if "dates" in disclosed:  # the time split's day counts
            disclosed["dates"] = self.dates_disclosure()
        clipped = (
            f"each province's test MSE with each row's squared error clipped to B = "
            f"{s.score_clip:g}"
        )
        noise = f"Gaussian noise σ/2·B, σ = {s.noise_multiplier:g}, clamped to [0, B]"
        if s.mode == "dp-local":
            server = (
                f"{clipped}, noised by the province ({noise}) and counted as a release; its row "
                f"count in the clear; no other score, no training MSE"
            )
        else:
            noise = f"Gaussian noise σ·B, σ = {s.unit_noise:g}, clamped to [0, B]"
            server = (
                f"{clipped}, its row count and its training MSE in the clear (the central model "
                f"trusts the server); it drops the training MSE and releases each test MSE only "
                f"noised ({noise}), counted as a release"
            )
        disclosed["metrics"] = entry(server, "nothing of any other province")
        return disclosed

    def statistics_disclosure(self) -> dict[str, str]:
        s = self.settings
        noise = (
            f"Gaussian noise σ = {s.unit_noise:g} times one row's reach, in the public "
            "bounds' unit space, counted as a release (ε per row)"
        )
        if s.mode == "dp-local":
            server = (
                f"each province's row count n in the clear, and its Σz and Σzzᵀ over its rows "
                f"clipped into the public bounds, noised by the province ({noise})"
            )
        else:
            server = (
                "each province's row count n, and its Σz and Σzzᵀ over its rows clipped into "
                f"the public bounds, in the clear; it noises their sum ({noise})"
            )
        if dpbounds.move_from(s.bounds) is not None:
            server += (
                "; the price target's sums as those of its move from today's close, in the "
                "move's bounds, mapped back to the price's"
            )
        return entry(server, f"{SCALER}, from the noised sums")

    def dates_disclosure(self) -> dict[str, str]:
        s = self.settings
        noise = (
            f"Gaussian noise σ = {s.unit_noise:g}·√2 on each count, counted as two releases "
            "(ε per row)"
        )
        if s.mode == "dp-local":
            server = f"{BINNED_DATE_COUNTS} of each province, noised by the province ({noise})"
        else:
            server = (
                f"{BINNED_DATE_COUNTS} of each province, in the clear; it noises their sum "
                f"({noise})"
            )
        return entry(server, f"{CUTOFF}, from the noised sums rounded and floored (docs/dp.md)")

    def round_report(self, server_round: int) -> dict[str, Any]:
        return {"privacy": self.accountant.report()}

    def round_disclosure(self, server_round, asked, sent):
        """The run's entry, with who sent, and the ε spent to this round (None: unbounded)."""
        spent = self.accountant.epsilon()
        said = super().round_disclosure(server_round, asked, sent)
        return {**said, "epsilon": spent if math.isfinite(spent) else None}


def counted_part(arrays: Arrays, count: int) -> None:
    """A province's day counts under DP: its n as it declared; their form is checked on
    arrival and their values, noised, on the sum only."""
    check_declared_count(arrays, count, "day counts'")


def noised_part(arrays: Arrays, count: int) -> None:
    """A province's noised statistics under local DP: its n as it declared, Σzzᵀ symmetric.
    Its other checks wait for the sum, which post-processing makes usable first."""
    check_declared_count(arrays, count, "statistics", least=2)
    if not np.array_equal(arrays["cross"], arrays["cross"].T):
        raise UpdateError("statistics' Σzzᵀ is not symmetric")
