"""The links of a province's protection chain (client/chain.py), and their one order.

The server asks for a mechanism through the task config (`privacy`, `compression`): `dp-local`
clips the step from the global parameters and adds Gaussian noise here, so the server never sees
it without the noise, and noises the evaluation's clipped MSE likewise; `he` encrypts the
statistics, the sample-weighted update and the scores under the federation's threshold Paillier
key and partially decrypts the sums the server asks it to; `secagg` masks them so that only
their sum over the provinces can be unmasked (client/secagg.py); compression sends the step
from the global parameters in fewer bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from client import chain
from client.chain import DECRYPT, EVALUATE, STATISTICS, TRAIN, Link, Next, Outcome, Task
from client.groups import TaskGroups
from client.he import HEClient, HEError
from client.he_record import DecryptionRecord
from client.secagg import SecAggClient
from common import dpbounds, dpstats, forecast, paillier, secagg, threshold
from common.compression import ErrorFeedback
from common.keysign import Identity
from common.model_settings import ForestSettings
from common.models import forest, histnoise, leafnoise
from common.noise import SecureRandom
from common.protection import DPNoise, DPScoring, DPStatistics, Protection
from common.settings import DayCounts, SettingsError
from common.tensors import Arrays
from common.vectors import clip, delta, flatten, unflatten


class PrivacyError(RuntimeError):
    """The server asks for a mechanism this client is not set up for."""


def privatize(
    update: Arrays,
    reference: Arrays | None,
    groups: TaskGroups,
    rng: np.random.Generator | SecureRandom | None = None,
) -> Arrays:
    """Local DP: the step from `reference` clipped to `dp_clip`, plus N(0, (σ·clip)²) noise."""
    if groups.need(Protection).privacy != "dp-local":
        return update
    noise = groups.need(DPNoise)
    bound, sigma = noise.dp_clip, noise.dp_noise_multiplier
    rng = rng or SecureRandom()  # the OS's secure generator: noise nobody can predict
    step = clip(delta(update, reference), bound)
    noisy = step + rng.normal(0.0, sigma * bound, size=step.shape)
    base = 0.0 if reference is None else flatten(reference)
    return unflatten(base + noisy, update)


def noised_score(
    metrics: Mapping[str, float],
    groups: TaskGroups,
    rng: np.random.Generator | SecureRandom | None = None,
) -> dict[str, float]:
    """Local DP on an evaluation: the MSE clipped per row to B (`dp_score_clip`; replacing all
    the province's rows moves it by B at most) plus N(0, (σ·B/2)²), clamped to [0, B] after.

    σ/2 is the updates' noise in units of their sensitivity 2C, so each evaluation is one more
    Gaussian release at the same noise and the accountant composes it with the updates.
    """
    if "mse" not in metrics:  # no test rows in this fold: nothing to release
        return dict(metrics)
    try:
        scoring = groups.need(DPScoring)
    except SettingsError as error:
        raise PrivacyError(f"the server asks for scores under dp-local: {error}") from None
    bound, sigma = scoring.dp_score_clip, scoring.dp_noise_multiplier
    if not bound:
        raise PrivacyError("the server asks for scores under dp-local with dp_score_clip 0")
    mse = forecast.noised_mse(metrics["mse"], bound, sigma * bound / 2, rng or SecureRandom())
    return {**metrics, "mse": mse}


def noised_statistics(
    sums: Arrays,
    asked: DPStatistics,
    rng: np.random.Generator | SecureRandom | None = None,
) -> Arrays:
    """Local DP on the statistics: n, Σz and Σzzᵀ of rows the work clipped into the public
    ranges, noised at `dp_statistics_noise` in the ranges' unit space (common/dpstats.py)."""
    try:
        lo, hi = dpbounds.limits(dpbounds.from_text(asked.dp_bounds))
    except dpbounds.BoundsError as error:
        raise PrivacyError(str(error)) from None
    return dpstats.noised(sums, lo, hi, asked.dp_statistics_noise, rng)


def noised_dates(
    counts: Arrays, asked: DayCounts, rng: np.random.Generator | SecureRandom | None = None
) -> Arrays:
    """Local DP on the time split's rows per year or per day: each count noised at
    `day_counts_noise` (common/dpstats.py); the row count n, public, as it was."""
    if asked.day_counts_noise is None:
        raise PrivacyError("the server asks for day counts under dp-local without their noise")
    kind = asked.day_counts
    return {**counts, kind: dpstats.noised_counts(counts[kind], asked.day_counts_noise, rng)}


class Encrypted:
    """`he`: the statistics, the sample-weighted update and the evaluation's scores (as sums over
    the test rows) leave encrypted and signed, and the training MSE stays home; a decryption task
    gets this province's partial decryption of the relayed uploads' product, once they pass its
    checks (client/he.py)."""

    def __init__(self, protocol: HEClient) -> None:
        self.protocol = protocol

    def __call__(self, task: Task, next_: Next) -> Outcome:
        if task.groups.need(Protection).privacy != "he":
            return next_(task)
        if task.kind == DECRYPT:
            outcome = next_(replace(task, parameters=None))
            relayed = task.parameters or {}
            return replace(outcome, arrays=self.protocol.partial(task.groups, relayed))
        number = task.groups.number
        if task.kind == STATISTICS and (number is None or number.round != 0):
            # Gathered once per run: a statistics phase named as another round would be a
            # second sum of them, which the record of decryptions keys by round.
            raise HEError("the server asks for statistics outside round 0; refusing")
        return summed(task, next_(task), self.protocol.protect, paillier.WEIGHT)


def timing(outcome: Outcome) -> dict[str, float]:
    """Of an evaluation's metrics, only the seconds it took: its scores leave as sums."""
    return {k: v for k, v in outcome.metrics.items() if k == "seconds"}


def summed(
    task: Task, outcome: Outcome, hide: Callable[[Arrays, TaskGroups], Arrays], weight: str
) -> Outcome:
    """What a mode that reveals only sums (he, secagg) sends of `outcome`, each part hidden
    by `hide`: the statistics as they are, the scores as sums over the test rows, the update
    weighted by its rows with that weight beside it as `weight` and no training MSE; any
    other task's outcome as it is."""
    if task.kind == STATISTICS:  # n, Σz, Σzzᵀ: summed as they are
        return replace(outcome, arrays=hide(outcome.arrays, task.groups))
    if task.kind == EVALUATE:  # the scores as sums over the test rows, summed as they are
        sums = forecast.as_sums(outcome.metrics, outcome.num_examples)
        return Outcome(outcome.num_examples, timing(outcome), hide(sums, task.groups))
    if task.kind != TRAIN:
        return outcome
    weighted = {k: v * outcome.num_examples for k, v in outcome.arrays.items()}
    weighted[weight] = np.array(float(outcome.num_examples))
    hidden = hide(weighted, task.groups)
    return Outcome(outcome.num_examples, forecast.without_train_mse(outcome.metrics), hidden)


class Masked:
    """`secagg`: the shares relayed with a task are kept, and the statistics' sums and the
    sample-weighted update leave masked, so that only their sum over the survivors can be
    unmasked (client/secagg.py)."""

    def __init__(self, protocol: SecAggClient) -> None:
        self.protocol = protocol

    def __call__(self, task: Task, next_: Next) -> Outcome:
        if task.groups.need(Protection).privacy != "secagg":
            return next_(task)
        parameters = task.parameters
        if parameters is not None and secagg.SENDERS in parameters:
            parameters = self.protocol.strip(parameters)
        outcome = next_(replace(task, parameters=parameters))
        if task.groups.exchange:  # one of many sums under one key agreement
            masked = self.protocol.exchange(outcome.arrays, task.groups, parameters)
            return replace(outcome, arrays=masked)
        return summed(task, outcome, self.protocol.mask, secagg.WEIGHT)


class Compressed:
    """`compression`: the update leaves as its step from the global parameters, compressed,
    with what earlier rounds held back (common/compression.py)."""

    def __init__(self) -> None:
        self.feedback = ErrorFeedback()

    def __call__(self, task: Task, next_: Next) -> Outcome:
        outcome = next_(task)
        if task.kind != TRAIN:
            return outcome
        sent = self.feedback.compress(outcome.arrays, task.parameters, task.groups.compression)
        return replace(outcome, arrays=sent)


class LocalNoise:
    """`dp-local`: the update leaves clipped and noised (`privatize`), a histogram tree's
    answer, whose rows the province bounded as it summed them, noised
    (common/models/histnoise.py), the statistics of its clipped rows and the time split's day
    counts noised (common/dpstats.py), a forest's drawn trees' leaf counts and sums noised
    (`noised_forest`), the evaluation's clipped MSE noised (`noised_score`), and the training
    MSE stays home."""

    def __call__(self, task: Task, next_: Next) -> Outcome:
        outcome = next_(task)
        groups = task.groups
        dp_local = groups.need(Protection).privacy == "dp-local"
        if dp_local and task.kind == STATISTICS and groups.dp_statistics:
            noised = noised_statistics(outcome.arrays, groups.dp_statistics)
            return replace(outcome, arrays=noised)
        if dp_local and task.kind == STATISTICS and groups.dates:
            return replace(outcome, arrays=noised_dates(outcome.arrays, groups.dates))
        if not dp_local or task.kind not in (TRAIN, EVALUATE):
            return outcome
        if task.kind == EVALUATE:
            return replace(outcome, metrics=noised_score(outcome.metrics, groups))
        if groups.tree_step:
            noise = groups.need(DPNoise)
            clip, sigma = noise.dp_clip, noise.dp_noise_multiplier
            noised = histnoise.noised(outcome.arrays, clip, sigma, SecureRandom())
        elif groups.forest:
            noised = noised_forest(outcome.arrays, groups)
        else:
            noised = privatize(outcome.arrays, task.parameters, groups)
        return Outcome(outcome.num_examples, forecast.without_train_mse(outcome.metrics), noised)


def noised_forest(
    arrays: Arrays,
    groups: TaskGroups,
    rng: np.random.Generator | SecureRandom | None = None,
) -> Arrays:
    """Local DP on a forest of drawn trees whose leaves the province filled from its clipped
    targets: every leaf's count and sum noised, its value and row count taken from them
    (common/models/leafnoise.py), each tree one release at σ/2 per unit of sensitivity."""
    noise = groups.need(DPNoise)
    least = groups.need(ForestSettings).rf_min_samples_leaf
    clip, sigma = noise.dp_clip, noise.dp_noise_multiplier
    rng = rng or SecureRandom()
    trees = forest.TREES.take(arrays, len(arrays) // len(forest.TREES.fields))
    return forest.forest_to_arrays(
        leafnoise.noised(tree, clip, sigma, least, rng) for tree in trees
    )


class ClientPrivacy:
    """The province's protection chain: its share of the federation's HE key if any and its
    record of the sums it decrypted (in memory unless given one on disk), the province's
    certificate to sign its secure-aggregation keys and HE uploads with (none when insecure),
    the protocol's state, and what compression held back."""

    def __init__(
        self,
        share: threshold.Share | None = None,
        identity: Identity | None = None,
        decryptions: DecryptionRecord | None = None,
    ) -> None:
        self.secagg = SecAggClient(identity)
        # The one order of the links, outermost first. Uploads are noised before anything
        # else, compressed, then masked or encrypted; parameters are decrypted or stripped of
        # their relayed shares before any inner link or the work sees them. (The server refuses
        # compression together with a privacy mode; the order is fixed all the same.)
        self.links: tuple[Link, ...] = (
            Encrypted(HEClient(share, identity, decryptions)),
            Masked(self.secagg),
            Compressed(),
            LocalNoise(),
        )

    def run(self, task: Task, work: Next) -> Outcome:
        """`work` on `task` as the chain lets it in and out."""
        return chain.run(self.links, task, work)
