"""Local DP on a random forest's leaves (`--model rf --privacy dp-local`): the floor for `rf`.

A tree of a union-of-local-trees forest is not a sum, so no secure aggregation or encryption
can hide it; what a province can do is bound what each leaf says about any one row, and noise it.
Its split thresholds are edges of a grid fixed in advance (common/models/forest.py), never a
row's value. Under dp-local the province also clips every target to [−C, C] before the trees
grow, makes each leaf's value the mean of the clipped targets of *all* its training rows that
land in it (each row counts once, whatever the bootstrap drew), with at least `FLOOR` rows in
every leaf, sets the inner nodes' values (which prediction never reads) to 0, and adds Gaussian
noise to every leaf value before the trees leave.

Sensitivity: with the tree's shape fixed, replacing one row changes at most two leaves' means
(the leaf it leaves and the leaf it enters), each by at most 2C/m for leaves of at least m rows,
so one tree's leaf values move by at most 2√2·C/m in L2. Noise of σ/2 times that on each leaf
makes each tree one Gaussian release at the run's noise multiplier σ/2 per unit of sensitivity,
as every other dp-local release is counted (server/privacy/dp.py). The shapes themselves (which
feature, which grid edge, and every node's row count) are grown from the rows and leave without
noise: ε covers the leaf values, not the shapes, and the accountant lists the shapes among the
releases no finite ε covers.
"""

from __future__ import annotations

import math

import numpy as np

from common.models.ensemble import Member
from common.models.forest import LEAF, leaves
from common.noise import SecureRandom

# The fewest rows a leaf may hold under a privacy mode (Table 1 has 1: a leaf is then one
# row's target). A deviation from the paper, stated in docs/privacy.md.
FLOOR = 20


def leaf_noise(clip: float, min_leaf: int, sigma: float) -> float:
    """The standard deviation of the noise on each leaf value: σ/2 times one tree's L2
    sensitivity 2√2·C/m."""
    return sigma * math.sqrt(2.0) * clip / min_leaf


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


def noised(tree: Member, scale: float, rng: np.random.Generator | SecureRandom) -> Member:
    """`tree` with N(0, scale²) added to each leaf value."""
    leaf = tree["children_left"] == LEAF
    value = tree["value"].copy()
    value[leaf] += rng.normal(0.0, scale, size=int(leaf.sum()))
    return {**tree, "value": value}
