"""Local DP on a random forest (`--model rf --privacy dp-local`): the floor for `rf`.

A tree of a union-of-local-trees forest is not a sum, so no secure aggregation or encryption
can hide it; what a province can do is make the whole tree one noised release. Its shape is
drawn, not grown (common/models/forest.py's `drawn_tree`: at each node a feature and one of the
federation's bin edges from a seeded generator, to a fixed depth): it reads no row, so it
releases nothing. The province clips every target to [−C, C], counts the rows of *all* its
training rows in each leaf (each once: no bootstrap) and sums their clipped targets, and noises
every leaf's count and sum before the tree leaves; each leaf's value is then its noised sum over
its noised count (at least the floor m, `--rf-min-samples-leaf`), clamped to [−C, C], and its
row count the noised count rounded (at least 1), the inner nodes' the sums of their leaves'.

Sensitivity: replacing one row moves at most two leaves (the one it leaves, the one it enters),
each leaf's sum by at most C and its count by 1, so the vector of sums/C and counts moves by at
most 2 in L2. Noise of σ on each (σ·C on a sum) makes each tree one Gaussian release at σ/2 per
unit of sensitivity, as every other dp-local release is counted (server/privacy/dp.py): ε covers
the whole tree. The floor m no longer protects anything (the noise does); it shrinks a leaf of
few rows toward no change, as though it held m.
"""

from __future__ import annotations

import numpy as np

from common.models.ensemble import Member
from common.models.forest import LEAF, leaves
from common.noise import SecureRandom


def clipped(y: np.ndarray, clip: float) -> np.ndarray:
    """Each row's target bounded to [−C, C], so that no row moves a leaf's mean by more."""
    return np.clip(y, -clip, clip)


def refit(tree: Member, x: np.ndarray, y: np.ndarray) -> Member:
    """`tree` with every node's row count and every leaf's value taken from all training rows
    (each once), and the inner nodes' values set to 0."""
    node = leaves(tree, np.asarray(x, dtype=np.float32))
    nodes = len(tree["children_left"])
    counts = np.bincount(node, minlength=nodes)
    sums = np.bincount(node, weights=y, minlength=nodes)
    left, right = tree["children_left"], tree["children_right"]
    inner = np.flatnonzero(left != LEAF)
    for parent in inner[::-1]:  # children come after their parent: fill counts bottom-up
        counts[parent] = counts[left[parent]] + counts[right[parent]]
    value = np.zeros(nodes)
    leaf = left == LEAF
    value[leaf] = sums[leaf] / np.maximum(counts[leaf], 1)
    return {
        **tree,
        "n_node_samples": counts.astype(tree["n_node_samples"].dtype),
        "value": value.astype(tree["value"].dtype),
    }


def noised(
    tree: Member, clip: float, sigma: float, floor: int, rng: np.random.Generator | SecureRandom
) -> Member:
    """`tree`, filled by `refit`, with each leaf's count plus N(0, σ²) and its sum of clipped
    targets plus N(0, (σ·C)²): each value the noised sum over the noised count (at least
    `floor`), clamped to [−C, C]; each leaf's row count the noised one rounded, at least 1, and
    each inner node's the sum of its children's, so the tree stays well formed."""
    left, right = tree["children_left"], tree["children_right"]
    leaf = left == LEAF
    size = int(leaf.sum())
    counts = tree["n_node_samples"][leaf].astype(np.float64)
    sums = tree["value"][leaf] * counts + rng.normal(0.0, sigma * clip, size=size)
    counts = counts + rng.normal(0.0, sigma, size=size)
    value = np.zeros(len(left))
    value[leaf] = np.clip(sums / np.maximum(counts, max(floor, 1)), -clip, clip)
    rows = np.zeros(len(left), dtype=np.int64)
    rows[leaf] = np.maximum(np.rint(counts), 1)
    for parent in np.flatnonzero(~leaf)[::-1]:  # children come after their parent
        rows[parent] = rows[left[parent]] + rows[right[parent]]
    return {
        **tree,
        "n_node_samples": rows.astype(tree["n_node_samples"].dtype),
        "value": value.astype(tree["value"].dtype),
    }
