"""Robust combiners: two liars among nine cannot drag the step far from the honest ones."""

import numpy as np
import pytest

from server.strategies.robust import combiner, krum_scores, mean, trimmed_mean

HONEST = np.random.default_rng(0).normal(loc=1.0, scale=0.1, size=(7, 5))
ATTACKS = {
    "scaled": HONEST[:2] * 100.0,
    "sign-flipped": -10.0 * HONEST[:2],
    "random": np.random.default_rng(1).normal(scale=50.0, size=(2, 5)),
}
ROBUST = ("median", "trimmed-mean", "krum", "multi-krum")


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_robust_rules_stay_near_the_honest_mean_while_the_mean_is_dragged(attack):
    steps = np.vstack([HONEST, ATTACKS[attack]])
    weights = np.ones(len(steps))
    honest = HONEST.mean(axis=0)
    assert np.linalg.norm(mean(steps, weights) - honest) > 1.0
    for name in ROBUST:
        combined = combiner(name, trim_fraction=0.25, krum_f=2)(steps, weights)
        assert np.linalg.norm(combined - honest) < 0.2, name


def test_mean_is_sample_weighted_and_trimming_drops_each_end():
    steps = np.array([[0.0], [1.0], [2.0], [100.0]])
    np.testing.assert_allclose(mean(steps, np.array([1.0, 0.0, 0.0, 1.0])), [50.0])
    np.testing.assert_allclose(trimmed_mean(steps, np.ones(4), 0.25), [1.5])
    np.testing.assert_allclose(combiner("median")(steps, np.ones(4)), [1.5])
    with pytest.raises(ValueError, match="leaves none"):
        trimmed_mean(steps, np.ones(4), 0.5)


def test_krum_scores_the_outlier_worst_and_needs_enough_clients():
    steps = np.array([[0.0], [0.1], [0.15], [0.3], [9.0]])
    assert np.argmax(krum_scores(steps, f=1)) == 4
    np.testing.assert_allclose(combiner("krum", krum_f=1)(steps, np.ones(5)), [0.1])
    with pytest.raises(ValueError, match="more than f"):
        krum_scores(steps[:3], f=1)
    with pytest.raises(ValueError, match="unknown aggregation"):
        combiner("mode")
