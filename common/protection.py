"""The protection settings a task carries, typed as common/settings.py types its data settings:
which privacy mode protects its upload, local DP's clip and noise, the HE session its uploads
are signed for, and how its update is compressed.

The server's privacy and compression strategies put them into the task config with
`to_config`; the client's protection chain (client/privacy.py) reads them back with
`from_config` or `sent`, which refuse a missing setting or one of the wrong kind by name. The
field names are the config keys the wire has always carried. Secure aggregation's own settings
(`secagg_*`) are in common/secagg.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.settings import TaskSettings


@dataclass(frozen=True)
class Protection(TaskSettings):
    """The privacy mode that protects the task's upload: dp-local, he or secagg; unset: none
    (the server-side modes send nothing)."""

    privacy: str | None = None


@dataclass(frozen=True)
class DPNoise(TaskSettings):
    """dp-local: the bound a province's step is clipped to, and the noise multiplier σ of the
    Gaussian noise N(0, (σ·clip)²) added to it."""

    dp_clip: float
    dp_noise_multiplier: float


@dataclass(frozen=True)
class DPScoring(TaskSettings):
    """dp-local's evaluation: the bound B each row's squared error is clipped to, and the
    noise multiplier σ of the N(0, (σ·B/2)²) noise on the clipped MSE."""

    dp_score_clip: float
    dp_noise_multiplier: float


@dataclass(frozen=True)
class HESession(TaskSettings):
    """he: the phase whose uploads the next sum decrypts, and the run it is part of; each
    province signs its encrypted uploads for both (empty: the task names none)."""

    he_session: str = ""
    he_run: str = ""


@dataclass(frozen=True)
class Compression(TaskSettings):
    """How a training update travels: its step from the global weights as `compression`
    (common/compression.py), keeping the largest `topk_fraction` of it under topk."""

    compression: str
    topk_fraction: float


@dataclass(frozen=True)
class DPStatistics(TaskSettings):
    """DP on the statistics: the public range of each column, as JSON in the columns' order
    (common/dpbounds.py), that every row is clipped into before it enters the sums; and the
    noise multiplier σ of the noise the province adds to them under dp-local
    (common/dpstats.py); under dp-central the server noises their sum and sends 0."""

    dp_bounds: str
    dp_statistics_noise: float
