"""Random forests as arrays: scikit-learn's trees on the wire, a union of trees, exact prediction.

A tree travels as the arrays of scikit-learn's `tree_` (`tree.{i}.children_left` …), never
pickled, at 32 bytes a node. Decoding checks every array before use, and prediction is a
vectorised descent in numpy that compares float32 features with float64 thresholds exactly as
scikit-learn does, so a decoded tree predicts bit for bit what the sender's tree predicted.

scikit-learn places a threshold halfway between two adjacent training values, so an exact
tree's thresholds are its rows' values. With `bins_per_decade` the trees are grown on bins of
a grid fixed in advance (`grid`: the same for every province and every run, derived from no
one's rows), and every threshold is an edge of that grid: a tree then says which grid cells
its rows fall in, never a row's value. The partition of the training rows, and so every leaf's
value and row count, is the one the tree found on the bins. Under `dp-local` no tree is grown
on rows at all: `drawn_tree` draws each tree's shape from a seed on the federation's edges (one
set per feature, from its summed sketch as gbdt's are; server/privacy/dp_forest.py) and only
its leaves' noised counts and sums carry the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from common.models.checks import UpdateError
from common.models.compiled import Array, compiled, kernel
from common.models.ensemble import Member, MemberCodec, check_vector
from common.tensors import Arrays

if TYPE_CHECKING:
    from sklearn.tree import DecisionTreeRegressor

# The seed paper's Table 1; max_depth and min_samples_leaf stay scikit-learn's (unlimited).
TABLE_1 = {
    "n_estimators": 100,
    "criterion": "squared_error",
    "min_samples_split": 2,
    "min_weight_fraction_leaf": 0.0,
    "max_features": 1.0,
    "bootstrap": True,
}
INDEX_FIELDS = ("children_left", "children_right", "feature", "n_node_samples")
FLOAT_FIELDS = ("threshold", "value")
INDEX, FLOAT = np.dtype("<i4"), np.dtype("<f8")
LEAF = -1


def check_tree(tree: Member, n_features: int, where: str) -> None:
    """A well-formed tree: every descent ends at a leaf and reads only existing features.

    Children come after their parent and every node but the root has exactly one parent, so
    the arrays form one tree rooted at node 0 and no descent can loop.
    """
    nodes = len(tree["children_left"])
    if nodes == 0:
        raise UpdateError(f"{where} has no nodes")
    for field in INDEX_FIELDS:
        check_vector(tree, field, INDEX, nodes, where)
    for field in FLOAT_FIELDS:
        check_vector(tree, field, FLOAT, nodes, where)
    left, right = tree["children_left"], tree["children_right"]
    is_leaf = left == LEAF
    if not np.array_equal(is_leaf, right == LEAF):
        raise UpdateError(f"{where} has a node with only one child")
    parents = np.flatnonzero(~is_leaf)
    children = np.concatenate([left[parents], right[parents]])
    if ((children <= np.tile(parents, 2)) | (children >= nodes)).any():
        raise UpdateError(f"{where} has a child index out of range or before its parent")
    counts = np.bincount(children, minlength=nodes)
    if counts[0] != 0 or (counts[1:] != 1).any():
        raise UpdateError(f"{where}: every node but the root must have exactly one parent")
    feature = tree["feature"][parents]
    if ((feature < 0) | (feature >= n_features)).any():
        raise UpdateError(f"{where} splits on a feature outside [0, {n_features})")
    if not np.isfinite(tree["threshold"][parents]).all() or not np.isfinite(tree["value"]).all():
        raise UpdateError(f"{where} holds NaN or infinite thresholds or values")
    samples = tree["n_node_samples"]
    split = samples[left[parents]] + samples[right[parents]]
    if (samples < 1).any() or (samples[parents] != split).any():
        raise UpdateError(f"{where}: node sample counts must be positive and add up")


TREES = MemberCodec("tree", (*INDEX_FIELDS, *FLOAT_FIELDS), check_tree)


def tree_arrays(estimator: DecisionTreeRegressor) -> Member:
    """A fitted single-output regression tree as the arrays that travel."""
    tree = estimator.tree_
    if tree.n_outputs != 1:
        raise ValueError("only single-output regression trees travel")
    if max(tree.node_count, int(tree.n_node_samples.max())) >= np.iinfo(INDEX).max:
        raise ValueError("a tree this large does not fit 32-bit node indices")
    return {
        "children_left": tree.children_left.astype(INDEX),
        "children_right": tree.children_right.astype(INDEX),
        "feature": tree.feature.astype(INDEX),
        "n_node_samples": tree.n_node_samples.astype(INDEX),
        "threshold": tree.threshold.astype(FLOAT),
        "value": tree.value[:, 0, 0].astype(FLOAT),
    }


# The grid's reach: 0 and ±10^(k/per_decade) from 10^LOWEST to 10^HIGHEST (prices, volumes
# and turnover in yuan all lie inside).
LOWEST, HIGHEST = -4, 12


def grid(per_decade: int) -> np.ndarray:
    """Bin edges fixed in advance, rising: 0 and ±10^(k/per_decade), `per_decade` to a decade."""
    powers = 10.0 ** (np.arange(LOWEST * per_decade, HIGHEST * per_decade + 1) / per_decade)
    return np.concatenate([-powers[::-1], [0.0], powers])


def bin_of(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin k, so that x ≤ edges[k] exactly when its bin is at most k; values are
    compared as float32, as prediction compares them."""
    return np.searchsorted(edges, np.asarray(x, dtype=np.float32).astype(np.float64))


def snapped(tree: Member, edges: np.ndarray) -> Member:
    """A tree grown on bins, its thresholds moved onto the grid. A threshold t lies between
    two bins a < b that rows hold, so edges[⌊t⌋] sends every row where the bins sent it."""
    split = tree["children_left"] != LEAF
    threshold = tree["threshold"].copy()
    threshold[split] = edges[np.floor(threshold[split]).astype(np.intp)]
    return {**tree, "threshold": threshold}


def fit_forest(
    x: np.ndarray, y: np.ndarray, bins_per_decade: int = 0, **params: object
) -> list[Member]:
    """Table 1's RandomForestRegressor, with `params` overriding it, as trees that travel; with
    `bins_per_decade`, grown on the grid's bins and split at its edges only."""
    # Imported by the fit alone: scikit-learn costs a process most of a second to import, and
    # decoding, checking and predicting trees need none of it.
    from sklearn.ensemble import RandomForestRegressor

    model = RandomForestRegressor(**{**TABLE_1, **params, "n_jobs": 1})
    if not bins_per_decade:
        return [tree_arrays(estimator) for estimator in model.fit(x, y).estimators_]
    edges = grid(bins_per_decade)
    model.fit(bin_of(x, edges).astype(np.float32), y)
    return [snapped(tree_arrays(estimator), edges) for estimator in model.estimators_]


# scikit-learn's mark of a leaf's feature and threshold, which prediction never reads.
UNDEFINED = -2


def drawn_tree(edges: Sequence[np.ndarray], depth: int, rng: np.random.Generator) -> Member:
    """A tree whose shape is drawn, never grown: at each node above `depth`, a feature with an
    edge inside the node's range on it and one such edge, both drawn from `rng`; a node with
    none, or at `depth`, is a leaf. No row is read, so the shape says nothing of any row (the
    same `rng` state draws the same tree for any rows). Children come after their parent;
    every count and value is 0 until the leaves are filled (common/models/leafnoise.py)."""
    low = np.full(len(edges), -np.inf)
    ranges = [(low, -low, 0)]  # each node's open range on every feature, and its level
    split: list[tuple[int, float] | None] = []  # each node's feature and edge, or None: a leaf
    for lo, hi, level in ranges:  # grows as it goes: breadth first
        inside = [(e > lo[f]) & (e < hi[f]) for f, e in enumerate(edges)] if level < depth else []
        open_ = [f for f, within in enumerate(inside) if within.any()]
        if not open_:
            split.append(None)
            continue
        f = open_[int(rng.integers(len(open_)))]
        candidates = edges[f][inside[f]]
        t = float(candidates[int(rng.integers(len(candidates)))])
        below, above = hi.copy(), lo.copy()
        below[f] = above[f] = t
        split.append((f, t))
        ranges += [(lo, below, level + 1), (above, hi, level + 1)]
    children = np.cumsum([0, *(2 for s in split if s is not None)])
    inner = np.array([s is not None for s in split])
    left = np.full(len(split), LEAF)
    left[inner] = children[:-1] + 1
    right = np.where(inner, left + 1, LEAF)
    feature = [UNDEFINED if s is None else s[0] for s in split]
    threshold = [float(UNDEFINED) if s is None else s[1] for s in split]
    nodes = len(split)
    return {
        "children_left": left.astype(INDEX),
        "children_right": right.astype(INDEX),
        "feature": np.array(feature, dtype=INDEX),
        "n_node_samples": np.zeros(nodes, dtype=INDEX),
        "threshold": np.array(threshold, dtype=FLOAT),
        "value": np.zeros(nodes, dtype=FLOAT),
    }


def forest_to_arrays(trees: Iterable[Member]) -> Arrays:
    return TREES.pack(trees)


def forest_from_arrays(arrays: Arrays, n_features: int) -> list[Member]:
    """The trees of a forest from the wire, each checked; UpdateError if any is malformed."""
    return TREES.unpack(arrays, n_features)


def union_of_trees(
    forests: Iterable[Sequence[Member]], counts: Iterable[int] | None = None
) -> list[Member]:
    """One forest of the trees of several: all of each, or the first `counts[i]` of forest i."""
    forests = list(forests)
    taken = [len(f) for f in forests] if counts is None else list(counts)
    return [tree for forest, n in zip(forests, taken, strict=True) for tree in forest[:n]]


def shares(total: int, samples: Sequence[int]) -> list[int]:
    """`total` split in proportion to `samples` by largest remainders, but at least 1 each.

    A sender too small for a whole tree still gets one, so the sum may exceed `total`.
    """
    weights = np.asarray(samples, dtype=np.float64)
    if len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"cannot share trees by sample counts {list(samples)}")
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(counts - exact, kind="stable")[: total - counts.sum()]] += 1
    return np.maximum(counts, 1).tolist()


def leaves(tree: Member, x32: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """The leaf each row lands in, from the root or from its node in `start` (a well-formed
    tree: `check_tree`'s, or one built here). Compiled: each row walks down on its own,
    float32 feature against float64 threshold, as scikit-learn's Cython compares them; the
    vectorised numpy descent it replaces (all rows one level per step) took about twice as
    long, for one level of a histogram tree and for a whole descent of 300,000 rows."""
    node = np.zeros(len(x32), dtype=np.intp) if start is None else start.astype(np.intp)
    compiled(_descend)(
        tree["children_left"], tree["children_right"], tree["feature"], tree["threshold"], x32, node
    )
    return node


@kernel(
    Array("int32", 1),
    Array("int32", 1),
    Array("int32", 1),
    Array("float64", 1),
    Array("float32", 2),
    Array("intp", 1, written=True),
)
def _descend(
    left: np.ndarray,
    right: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    x32: np.ndarray,
    node: np.ndarray,
) -> None:
    for row in range(node.shape[0]):
        at = node[row]
        while left[at] != -1:  # LEAF
            at = left[at] if x32[row, feature[at]] <= threshold[at] else right[at]
        node[row] = at


def predict_forest(trees: Sequence[Member], x: np.ndarray) -> np.ndarray:
    """The mean of the trees' predictions, summed in order as RandomForestRegressor sums them."""
    x32 = np.asarray(x, dtype=np.float32)
    if x32.ndim != 2 or not np.isfinite(x32).all():
        raise ValueError("a forest predicts from a 2-D array of finite float32 features")
    total = np.zeros(len(x32))
    for tree in trees:
        total += tree["value"][leaves(tree, x32)]
    total /= len(trees)
    return total
