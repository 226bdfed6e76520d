"""What each province is worth to the global model: leave-one-out and Monte-Carlo Shapley values.

A coalition's value v(S) is a number where more is better (the analysis uses minus the global
test MSE of the model built from S's updates). Leave-one-out is v(all) − v(all∖{i}). Shapley
averages i's marginal contribution v(P ∪ {i}) − v(P) over random orders of the provinces, P
being those before i; along one order the marginals add up to v(all) − v(∅), so the estimate
is efficient exactly, whatever the orders.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

Coalition = frozenset[str]
Order = tuple[str, ...]


def random_orders(players: Sequence[str], count: int, seed: int) -> list[list[Order]]:
    """At least `count` orders, in sets: a random order with all its rotations.

    In a rotation set every player comes first exactly once, so the largest marginal of all,
    v({i}) − v(∅), enters each estimate with its exact Shapley weight 1/n instead of by luck.
    """
    rng = np.random.default_rng(seed)
    n = len(players)
    sets = []
    for _ in range(-(-count // n)):
        order = [players[i] for i in rng.permutation(n)]
        sets.append([tuple(order[k:] + order[:k]) for k in range(n)])
    return sets


def coalitions(players: Sequence[str], sets: Sequence[Sequence[Order]]) -> list[Coalition]:
    """Every coalition leave-one-out and the orders need, each once, smallest first."""
    everyone = frozenset(players)
    needed = {everyone, frozenset()} | {everyone - {p} for p in players}
    for order in itertools.chain.from_iterable(sets):
        needed |= {frozenset(order[:k]) for k in range(1, len(order))}
    return sorted(needed, key=lambda c: (len(c), sorted(c)))


def leave_one_out(players: Sequence[str], value: Mapping[Coalition, float]) -> dict[str, float]:
    everyone = frozenset(players)
    return {p: value[everyone] - value[everyone - {p}] for p in players}


def shapley(
    players: Sequence[str], sets: Sequence[Sequence[Order]], value: Mapping[Coalition, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Each player's mean marginal contribution over every order, and its standard error with
    each set of orders as one draw (orders within a rotation set are not independent)."""
    draws = np.array([[_marginals(players, o, value) for o in orders] for orders in sets])
    per_set = {p: draws[:, :, i].mean(axis=1) for i, p in enumerate(players)}
    means = {p: float(d.mean()) for p, d in per_set.items()}
    errors = {
        p: float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0 for p, d in per_set.items()
    }
    return means, errors


def _marginals(
    players: Sequence[str], order: Order, value: Mapping[Coalition, float]
) -> list[float]:
    """Each player's marginal contribution along `order`, listed as `players` are."""
    gain = {}
    before: Coalition = frozenset()
    for player in order:
        after = before | {player}
        gain[player] = value[after] - value[before]
        before = after
    return [gain[p] for p in players]
