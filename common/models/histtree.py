"""Regression trees chosen from summed histograms: shared bins, per-node sums, exact splits.

Every party bins its rows on the same edges and sums, for each open node of a tree level, the
gradient and Hessian of its rows per feature and bin. Those sums add up across parties, so a
split chosen from the summed histograms is the split a single party holding every row would
choose: the federated tree equals the centralised one up to the binning (which is the same).
The bin edges come from a sketch that is itself a sum: counts of rows in a fine grid of
standard deviations around the federation's mean, so no party reveals a row's value.

Trees are built in the forest's array format (common/models/forest.py); a finished model is
the trees plus a base score, and predicts base + Σ tree values (leaves already carry the
learning rate, or 1/trees for a forest).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

import numpy as np

from common.models.checks import UpdateError
from common.models.compiled import Array, Scalar, compiled, kernel
from common.models.ensemble import Member
from common.models.forest import FLOAT, INDEX, LEAF, TREES, leaves
from common.tensors import Arrays

# The sketch: a grid of CELLS equal cells spanning ±SPAN standard deviations of each feature.
CELLS = 4096
SPAN = 8.0
# Relative difference below which two split gains count as equal.
TIE = 1e-9


def as_float32(x: np.ndarray) -> np.ndarray:
    """Features as trees compare them: float32 values, widened exactly to float64."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def _safe(std: np.ndarray) -> np.ndarray:
    return np.where(std > 0, std, 1.0)


def sketch(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Rows per grid cell and feature, (features, CELLS): a sum over rows, like any statistic."""
    z = (as_float32(x) - mean) / _safe(std)
    cell = np.clip(np.floor((z + SPAN) * (CELLS / (2 * SPAN))), 0, CELLS - 1).astype(np.intp)
    return np.stack([np.bincount(c, minlength=CELLS) for c in cell.T]).astype(np.float64)


def edges_from_sketch(
    counts: np.ndarray, mean: np.ndarray, std: np.ndarray, max_bins: int
) -> list[np.ndarray]:
    """Up to `max_bins − 1` edges per feature at the summed sketch's quantiles.

    An edge is a cell's upper boundary, kept only with rows on both sides of it.
    """
    edges = []
    bounds = -SPAN + np.arange(1, CELLS + 1) * (2 * SPAN / CELLS)
    for f, row in enumerate(np.asarray(counts, dtype=np.float64)):
        cumulative = np.cumsum(row)
        total = cumulative[-1]
        wanted = total * np.arange(1, max_bins) / max_bins
        cells = np.unique(np.searchsorted(cumulative, wanted, side="left"))
        cells = cells[(cumulative[cells] > 0) & (cumulative[cells] < total)]
        values = mean[f] + bounds[cells] * _safe(std)[f] if std[f] > 0 else np.empty(0)
        edges.append(np.unique(values.astype(FLOAT)))
    return edges


def used_bins(edges: list[np.ndarray], width: int) -> np.ndarray:
    """Which of `width` histogram columns are bins of each feature (its edges + 1): the others
    are empty in every answer, and noise there (local DP) is dropped."""
    return np.arange(width) <= np.array([len(e) for e in edges])[:, None]


def pack_edges(edges: list[np.ndarray]) -> Arrays:
    return {
        "edges": np.concatenate([*edges, np.empty(0)]).astype(FLOAT),
        "edge_counts": np.array([len(e) for e in edges], dtype=INDEX),
    }


def unpack_edges(arrays: Arrays, n_features: int, max_bins: int) -> list[np.ndarray]:
    """Edges from the wire, checked: per feature, finite, rising, fewer than `max_bins`."""
    flat, counts = arrays.get("edges"), arrays.get("edge_counts")
    if flat is None or counts is None or counts.shape != (n_features,) or flat.ndim != 1:
        raise UpdateError(f"bin edges must be 'edges' and 'edge_counts' for {n_features} features")
    if (counts < 0).any() or (counts >= max_bins).any() or counts.sum() != len(flat):
        raise UpdateError(f"bin edge counts must lie in [0, {max_bins}) and add up")
    edges = np.split(np.asarray(flat, dtype=FLOAT), np.cumsum(counts)[:-1])
    if any(not np.isfinite(e).all() or (np.diff(e) <= 0).any() for e in edges):
        raise UpdateError("bin edges must be finite and strictly rising")
    return edges


def bin_rows(x: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """Each value's bin, (features, rows) so a feature's bins lie together as histograms read
    them: the number of edges below it, so `bin ≤ b` ⇔ `x ≤ edges[b]` exactly as a tree
    compares a float32 feature with a float64 threshold."""
    x64 = as_float32(x)
    return np.stack(
        [np.searchsorted(e, x64[:, f], side="left") for f, e in enumerate(edges)]
    ).astype(np.uint16)  # max bins ≤ 65,536


def histograms(
    bins: np.ndarray,
    rows: np.ndarray,
    slot: np.ndarray,
    grad: np.ndarray,
    hess: np.ndarray | None,
    slots: int,
    width: int,
) -> Arrays:
    """Σ gradient and Σ Hessian per (open node, feature, bin) from `bins` (features, rows):
    each listed row adds its `grad` and `hess` to the histograms of its `slot` (a row listed
    for several trees adds to each); `hess` None: every row's is 1, its sums are row counts.

    Compiled: per feature one pass over the listed rows adds both sums, in the rows' order, so
    each entry is the sum `np.bincount` gives, to the last bit. Two `bincount`s per feature,
    each after gathering and offsetting the feature's bins, took 2.3 to 2.6 times as long
    (300,000 rows); one `bincount` over a flat node × feature × bin index 2.4 times longer
    than those (a feature's histograms stay in cache)."""
    sums = {
        "grad": np.zeros((slots, len(bins), width)),
        "hess": np.zeros((slots, len(bins), width)),
    }
    unit = hess is None
    compiled(_add_rows)(
        bins,
        np.ascontiguousarray(rows, dtype=np.intp),
        np.ascontiguousarray(slot, dtype=np.intp),
        np.ascontiguousarray(grad, dtype=np.float64),
        np.zeros(0) if unit else np.ascontiguousarray(hess, dtype=np.float64),
        unit,
        sums["grad"],
        sums["hess"],
    )
    return sums


@kernel(
    Array("uint16", 2),
    Array("intp", 1),
    Array("intp", 1),
    Array("float64", 1),
    Array("float64", 1),
    Scalar("bool"),
    Array("float64", 3, written=True),
    Array("float64", 3, written=True),
)
def _add_rows(
    bins: np.ndarray,
    rows: np.ndarray,
    slot: np.ndarray,
    grad: np.ndarray,
    hess: np.ndarray,
    unit: bool,
    out_grad: np.ndarray,
    out_hess: np.ndarray,
) -> None:
    for f in range(bins.shape[0]):
        for i in range(rows.shape[0]):
            b = bins[f, rows[i]]
            out_grad[slot[i], f, b] += grad[i]
            out_hess[slot[i], f, b] += 1.0 if unit else hess[i]


@dataclass(frozen=True)
class Rule:
    """How a node is scored and valued: L2 `reg_lambda`, `min_child_weight`, leaf `shrink`."""

    reg_lambda: float
    min_child_weight: float
    shrink: float

    def leaf(self, g: np.ndarray, h: np.ndarray) -> np.ndarray:
        # A grown node holds at least min_child_weight; only noised sums (local DP) fall below.
        return -g / (np.maximum(h, self.min_child_weight) + self.reg_lambda) * self.shrink

    def score(self, g: np.ndarray, h: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(h > 0, g * g / (h + self.reg_lambda), 0.0)


@dataclass(frozen=True)
class Splits:
    """The best split of each node: feature, bin (left takes bins ≤ it), gain, left sums;
    and the node's own sums (of its first feature's bins), which its leaf value is made of."""

    feature: np.ndarray
    bin: np.ndarray
    gain: np.ndarray
    left_grad: np.ndarray
    left_hess: np.ndarray
    total_grad: np.ndarray
    total_hess: np.ndarray


def best_splits(
    grad: np.ndarray, hess: np.ndarray, rule: Rule, allowed: np.ndarray, edge_counts: np.ndarray
) -> Splits:
    """Each node's best split from its summed histograms (nodes, features, bins).

    `allowed` (nodes, features) masks the features a node may split on, and a feature splits
    only at one of its edges (`edge_counts`: how many each has). A split needs `min_child_weight` of
    Hessian on either side; gain −inf means the node stays a leaf.

    Compiled: per node one pass scores every candidate (left sums as running sums over the
    bins, as `np.cumsum` adds them) and a second picks the first within `TIE` of the best, the
    same splits and gains to the last bit as the vectorised numpy scoring it replaces, which
    made about ten passes over every node × feature × bin and was the server's largest cost.
    """
    nodes = grad.shape[0]
    # Pairwise sums, as numpy adds them; a node's parent score as `Rule.score` gives it.
    g_total, h_total = grad[:, 0, :].sum(axis=1), hess[:, 0, :].sum(axis=1)
    out = {
        "feature": np.zeros(nodes, dtype=np.intp),
        "bin": np.zeros(nodes, dtype=np.intp),
        "gain": np.full(nodes, -np.inf),
        "left_grad": np.zeros(nodes),
        "left_hess": np.zeros(nodes),
    }
    compiled(_score_nodes)(
        np.ascontiguousarray(grad, dtype=np.float64),
        np.ascontiguousarray(hess, dtype=np.float64),
        g_total,
        h_total,
        rule.score(g_total, h_total),
        np.ascontiguousarray(allowed, dtype=np.bool_),
        np.ascontiguousarray(edge_counts, dtype=np.intp),
        float(rule.reg_lambda),
        float(rule.min_child_weight),
        TIE,
        *out.values(),
    )
    return Splits(**out, total_grad=g_total, total_hess=h_total)


@kernel(
    Array("float64", 3),
    Array("float64", 3),
    Array("float64", 1),
    Array("float64", 1),
    Array("float64", 1),
    Array("bool", 2),
    Array("intp", 1),
    Scalar("float64"),
    Scalar("float64"),
    Scalar("float64"),
    Array("intp", 1, written=True),
    Array("intp", 1, written=True),
    Array("float64", 1, written=True),
    Array("float64", 1, written=True),
    Array("float64", 1, written=True),
)
def _score_nodes(
    grad: np.ndarray,
    hess: np.ndarray,
    g_total: np.ndarray,
    h_total: np.ndarray,
    parent: np.ndarray,
    allowed: np.ndarray,
    edge_counts: np.ndarray,
    reg_lambda: float,
    min_child_weight: float,
    tie: float,
    feature: np.ndarray,
    bin_: np.ndarray,
    best_gain: np.ndarray,
    left_grad: np.ndarray,
    left_hess: np.ndarray,
) -> None:
    nodes, features, width = grad.shape
    candidates = width - 1
    if features * candidates == 0:
        return  # nothing to split on: every node stays a leaf
    gains = np.empty(features * candidates)
    gls = np.empty(features * candidates)
    hls = np.empty(features * candidates)
    for n in range(nodes):
        top = -np.inf
        for f in range(features):
            gl = 0.0
            hl = 0.0
            for b in range(candidates):
                gl += grad[n, f, b]
                hl += hess[n, f, b]
                hr = h_total[n] - hl
                at = f * candidates + b
                gls[at], hls[at] = gl, hl
                gain = -np.inf
                if (
                    allowed[n, f]
                    and b < edge_counts[f]
                    and hl >= min_child_weight
                    and hr >= min_child_weight
                ):
                    gr = g_total[n] - gl
                    gain = gl * gl / (hl + reg_lambda) + gr * gr / (hr + reg_lambda) - parent[n]
                    top = max(top, gain)
                gains[at] = gain
        # Gains equal but for rounding (perfectly correlated features) go to the first
        # candidate, so the order in which parties' sums were added never changes the tree.
        floor = top - tie * abs(top)
        best = 0
        for at in range(features * candidates):
            if gains[at] >= floor:
                best = at
                break
        feature[n], bin_[n] = best // candidates, best % candidates
        best_gain[n], left_grad[n], left_hess[n] = gains[best], gls[best], hls[best]


def next_level(
    grad: np.ndarray,
    hess: np.ndarray,
    child_grad: np.ndarray,
    child_hess: np.ndarray,
    parent: np.ndarray,
    small_left: np.ndarray,
    used: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The histograms of a level's children, (2 × splits, features, bins), left then right of
    each split, from their parents' (`grad`, `hess`, indexed by `parent`) and the summed
    histograms of the child asked for (left where `small_left`), zeroed where not `used`: the
    sibling's is its parent's minus the child's.

    Compiled: one pass writes both children of every split, the same numbers as masking the
    answer, then subtracting each child from its parent node by node (a dict of arrays
    stacked into one per level), which moved every histogram three times on the server's
    path between the last answer and the next question."""
    splits, features, width = child_grad.shape
    out = np.empty((2 * splits, features, width)), np.empty((2 * splits, features, width))
    compiled(_fill_children)(
        np.ascontiguousarray(grad),
        np.ascontiguousarray(hess),
        np.ascontiguousarray(child_grad, dtype=np.float64),
        np.ascontiguousarray(child_hess, dtype=np.float64),
        np.ascontiguousarray(parent, dtype=np.intp),
        np.ascontiguousarray(small_left, dtype=np.bool_),
        np.ascontiguousarray(used, dtype=np.bool_),
        *out,
    )
    return out


@kernel(
    Array("float64", 3),
    Array("float64", 3),
    Array("float64", 3),
    Array("float64", 3),
    Array("intp", 1),
    Array("bool", 1),
    Array("bool", 2),
    Array("float64", 3, written=True),
    Array("float64", 3, written=True),
)
def _fill_children(
    grad: np.ndarray,
    hess: np.ndarray,
    child_grad: np.ndarray,
    child_hess: np.ndarray,
    parent: np.ndarray,
    small_left: np.ndarray,
    used: np.ndarray,
    out_grad: np.ndarray,
    out_hess: np.ndarray,
) -> None:
    splits, features, width = child_grad.shape
    for i in range(splits):
        p = parent[i]
        small, other = (2 * i, 2 * i + 1) if small_left[i] else (2 * i + 1, 2 * i)
        for f in range(features):
            for b in range(width):
                # × 1 or × 0 as numpy's `* used` gives (exact: a sum minus it rounds alike).
                keep = 1.0 if used[f, b] else 0.0
                g = child_grad[i, f, b] * keep
                h = child_hess[i, f, b] * keep
                out_grad[small, f, b], out_hess[small, f, b] = g, h
                out_grad[other, f, b] = grad[p, f, b] - g
                out_hess[other, f, b] = hess[p, f, b] - h


def warm_up() -> None:
    """Load the compiled kernels in the background, once a process. A run's first level
    question waits for the slowest province's load unless it started before the round: the
    built module's 0.1 s of CPU, or, without it, numba's import and cache, about 0.5 s of CPU
    each and several seconds on a busy machine (common/models/compiled.py)."""
    global _warming
    with _warm_lock:
        if _warming is None:
            _warming = threading.Thread(target=load_kernels, name="kernels", daemon=True)
            _warming.start()


_warm_lock = threading.Lock()
_warming: threading.Thread | None = None


def load_kernels() -> None:
    """Each kernel once, on tiny inputs of the types the questions give it."""
    rule = Rule(0.0, 1.0, 1.0)
    one = np.zeros(1, dtype=np.intp)
    histograms(np.zeros((1, 1), dtype=np.uint16), one, one, np.zeros(1), None, 1, 2)
    sums = np.zeros((1, 1, 2))
    best_splits(sums, sums, rule, np.ones((1, 1), dtype=bool), one)
    next_level(sums, sums, sums, sums, one, np.ones(1, dtype=bool), np.ones((1, 2), dtype=bool))
    leaves(TreeBuilder(rule).arrays(), np.zeros((1, 1), dtype=np.float32))


@dataclass
class TreeBuilder:
    """One tree grown level by level in the forest's arrays; the open nodes are its leaves."""

    rule: Rule
    left: list[int] = field(default_factory=lambda: [LEAF])
    right: list[int] = field(default_factory=lambda: [LEAF])
    feature: list[int] = field(default_factory=lambda: [LEAF])
    threshold: list[float] = field(default_factory=lambda: [0.0])
    value: list[float] = field(default_factory=lambda: [0.0])
    count: list[int] = field(default_factory=lambda: [1])

    def arrays(self) -> Member:
        return {
            "children_left": np.array(self.left, dtype=INDEX),
            "children_right": np.array(self.right, dtype=INDEX),
            "feature": np.array(self.feature, dtype=INDEX),
            "n_node_samples": np.array(self.count, dtype=INDEX),
            "threshold": np.array(self.threshold, dtype=FLOAT),
            "value": np.array(self.value, dtype=FLOAT),
        }

    def settle(self, node: int, g: float, h: float) -> None:
        """Give an open node its leaf value from its summed sums (the root its row count too;
        a child's count is fixed when its parent splits, so counts always add up)."""
        self.value[node] = float(self.rule.leaf(np.float64(g), np.float64(h)))
        if node == 0:
            self.count[0] = max(round(float(h)), 1)

    def split(self, node: int, feature: int, threshold: float, left_h: float) -> tuple[int, int]:
        """Split `node`; its children are new open nodes (leaves until settled)."""
        children = len(self.left), len(self.left) + 1
        self.left[node], self.right[node] = children
        self.feature[node], self.threshold[node] = feature, threshold
        left_count = min(max(round(float(left_h)), 1), self.count[node] - 1)
        for count in (left_count, self.count[node] - left_count):
            self.left.append(LEAF)
            self.right.append(LEAF)
            self.feature.append(LEAF)
            self.threshold.append(0.0)
            self.value.append(0.0)
            self.count.append(count)
        return children


def extend(
    tree: Member | None, node: np.ndarray, feature: np.ndarray, threshold: np.ndarray
) -> Member:
    """The structure of `tree` (None: a lone root) with its leaves `node` split on `feature`
    at `threshold`, each one's children appended (left, right) in that order, as
    `TreeBuilder.split` numbers them: the tree a party holds, grown by one question's splits
    (it needs the splits only, not the leaves' values). UpdateError unless every node split
    is a distinct leaf of `tree`."""
    start = tree if tree is not None else _LONE_ROOT
    n = len(start["children_left"])
    if ((node < 0) | (node >= n)).any() or len(np.unique(node)) < len(node):
        raise UpdateError(f"the nodes split must be distinct nodes of the {n} held")
    if (start["children_left"][node] != LEAF).any():
        raise UpdateError("only a leaf of the tree held can be split")
    grown = {
        k: np.concatenate([start[k], np.full(2 * len(node), fill, start[k].dtype)])
        for k, fill in _NEW_NODE.items()
    }
    first = n + 2 * np.arange(len(node), dtype=INDEX)
    grown["children_left"][node], grown["children_right"][node] = first, first + 1
    grown["feature"][node], grown["threshold"][node] = feature, threshold
    return grown


def digest(tree: Member) -> bytes:
    """SHA-256 of a tree's structure (its splits, as `extend` builds them). A level question
    names the digest of each tree it asks about, so a party whose tree came out otherwise
    refuses it, and the question's bytes, which secure aggregation's masks are bound to, pin
    the whole tree, not only the splits they add."""
    h = hashlib.sha256()
    for k in _NEW_NODE:
        h.update(np.ascontiguousarray(tree[k], dtype=_LONE_ROOT[k].dtype).tobytes())
    return h.digest()


# A new node in the arrays a party moves its rows by: a leaf, no feature, no threshold.
_NEW_NODE = {"children_left": LEAF, "children_right": LEAF, "feature": LEAF, "threshold": 0.0}
_LONE_ROOT = {
    k: np.array([fill], dtype=FLOAT if k == "threshold" else INDEX) for k, fill in _NEW_NODE.items()
}
ROOT_DIGEST = digest(_LONE_ROOT)


def descend(before: Member | None, tree: Member, node: np.ndarray, x32: np.ndarray) -> np.ndarray:
    """Each row's leaf in `tree`, from its node in `before` when `tree` only adds splits under
    leaves of `before` (a level grown), so a level costs the rows that move, not the depth."""
    if before is None or not _extends(before, tree):
        return leaves(tree, x32)
    return leaves(tree, x32, node)


def _extends(before: Member, tree: Member) -> bool:
    """`tree` keeps every split of `before`, and its leaves may only have become splits."""
    n = len(before["children_left"])
    if len(tree["children_left"]) < n:
        return False
    split = before["children_left"] != LEAF
    return all(
        np.array_equal(tree[k][:n][split], before[k][split])
        for k in ("children_left", "children_right", "feature", "threshold")
    )


def slots(tree: Member, asked: np.ndarray, node: np.ndarray) -> np.ndarray:
    """Each row's position in `asked` (the nodes whose histograms are wanted), or −1."""
    lookup = np.full(len(tree["children_left"]), -1, dtype=np.intp)
    lookup[asked] = np.arange(len(asked))
    return lookup[node]


def pack_model(base_score: float, trees: list[Member]) -> Arrays:
    return {"base_score": np.array([base_score], dtype=FLOAT), **TREES.pack(trees)}


def unpack_model(arrays: Arrays, n_features: int) -> tuple[float, list[Member]]:
    """Base score and checked trees; UpdateError if the model is malformed."""
    base = arrays.get("base_score")
    if base is None or base.dtype != FLOAT or base.shape != (1,) or not np.isfinite(base).all():
        raise UpdateError("a histogram-tree model needs a finite float64 'base_score' (1,)")
    trees = TREES.unpack({k: v for k, v in arrays.items() if k != "base_score"}, n_features)
    return float(base[0]), trees


def predict(base_score: float, trees: list[Member], x: np.ndarray) -> np.ndarray:
    """base + Σ tree values, the trees summed in order as they were grown."""
    x32 = np.asarray(x, dtype=np.float32)
    total = np.full(len(x32), base_score)
    for tree in trees:
        total += tree["value"][leaves(tree, x32)]
    return total
