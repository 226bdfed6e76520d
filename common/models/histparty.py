"""One party's side of histogram trees: its rows stay here, only sums over shared bins leave.

A party keeps, between questions, its rows binned on the federation's edges, its current
predictions and the gradients of the tree being grown, so a question costs one pass over its
rows for the asked nodes. Its answers are a sketch (rows per grid cell), histograms of the
gradient and Hessian per node, feature and bin, and its validation rows' squared error: sums
that add up across parties, and that secure aggregation can hide.
"""

from __future__ import annotations

import numpy as np

from common.models import histnoise, histtree
from common.models.ensemble import Member
from common.models.histgrow import Ask, Growing, Grown, Query, TreeSettings, grow, sketch_query
from common.tensors import Arrays


class Party:
    """Rows `x` (unscaled features) and the target `y` the trees learn."""

    def __init__(self, x: np.ndarray, y: np.ndarray, settings: TreeSettings) -> None:
        self.settings = settings
        # Every draw (validation rows, subsamples, bootstrap weights) comes from the row itself,
        # so a row is drawn alike wherever it lives: the federation draws what the union draws.
        keys = row_keys(x, y)
        held = uniform(keys, settings.seed, -1) < settings.holds_out
        self.keys = keys[~held]
        self.x, self.y = x[~held], y[~held]
        self.x_val, self.y_val = x[held], y[held]
        self.x32 = np.asarray(self.x, dtype=np.float32)
        self.edges: list[np.ndarray] | None = None
        self.bins = np.zeros((x.shape[1], 0), dtype=np.uint16)
        self._start_ensemble()

    def _start_ensemble(self) -> None:
        """No trees yet: predictions wait for the base score, no tree is being grown."""
        self.margin = np.zeros(len(self.y))
        self.margin_val = np.zeros(len(self.y_val))
        self.trees_added = 0
        self.started = False
        # The trees being grown, by number, as last asked.
        self.growing: dict[int, _Growing] = {}

    @property
    def rows(self) -> int:
        return len(self.y)

    def answer(self, query: Query) -> Arrays:
        if query.step == "sketch":  # a round's first question: a fresh ensemble follows
            self._start_ensemble()
            return {"sketch": histtree.sketch(self.x, query.mean, query.std)}
        if query.edges is not None:
            self._use_edges(query)
        elif not self.started:  # edges from an ensemble before this one would be stale
            raise ValueError("the ensemble's first level question must bring the bin edges")
        self._add_trees(query)
        self.started = True
        # Trees not asked about are finished (or abandoned): their state goes. Every tree's
        # splits are checked before any row moves: a refused question leaves the trees held.
        follow = [(self._follow(g, query.clip), g) for g in query.grow]
        self.growing = {g.index: tree.grow(extended, self.x32) for (tree, extended), g in follow}
        out = self._histograms(query.grow)
        if query.score:
            residual = self.y_val - self.margin_val
            out["val_sse"] = np.asarray(float(residual @ residual))
            out["val_rows"] = np.asarray(float(len(residual)))
        return out

    def _follow(self, asked: Growing, clip: float) -> tuple[_Growing, Member]:
        """The tree asked about (a new one from its root) and its structure with the
        question's splits added; ValueError, refusing the question, unless the splits follow
        on a tree held: none held for that number, one of another size, a split of a node
        that is not a leaf of it, or a tree that comes out other than the question names."""
        if asked.base == 0:
            tree = self._start_tree(asked.index, clip)
        else:
            tree = self.growing.get(asked.index)
            held = "no such tree" if tree is None else f"{tree.nodes}"
            if tree is None or tree.nodes != asked.base:
                raise ValueError(
                    f"tree {asked.index}'s splits follow on {asked.base} nodes, but this "
                    f"party holds {held}"
                )
        grown = histtree.extend(tree.tree, asked.node, asked.feature, asked.threshold)
        if histtree.digest(grown) != asked.digest:
            raise ValueError(
                f"tree {asked.index} with the question's splits is not the tree it names "
                "(its digest differs): they do not follow on the tree this party holds"
            )
        return tree, grown

    def _histograms(self, asked: list[Growing]) -> Arrays:
        """The asked nodes of every tree in one pass per feature, in the question's order: a
        row is listed once for each tree it sits in an asked node of."""
        rows, slots, grad, hess = [np.zeros(0, np.intp)], [np.zeros(0, np.intp)], [[]], [[]]
        units = all(self.growing[g.index].unit for g in asked)
        offset = 0
        for g in asked:
            tree = self.growing[g.index]
            at, slot = tree.rows_asked(g.asked)
            rows.append(at)
            slots.append(slot + offset)
            grad.append(tree.grad[at])
            hess.append([] if units else tree.hess[at])
            offset += len(g.asked)
        listed = [np.concatenate(parts) for parts in (rows, slots, grad)]
        weights = None if units else np.concatenate(hess)
        return histtree.histograms(self.bins, *listed, weights, offset, self.settings.max_bins)

    def _use_edges(self, query: Query) -> None:
        """Bin the rows on new edges; the ensemble's first question also brings the base score."""
        same = self.edges is not None and all(
            np.array_equal(a, b) for a, b in zip(self.edges, query.edges, strict=True)
        )
        if not same:
            self.edges = query.edges
            self.bins = histtree.bin_rows(self.x, query.edges)
        if query.base_score is not None and not self.started:
            self.margin[:] = query.base_score
            self.margin_val[:] = query.base_score

    def _add_trees(self, query: Query) -> None:
        """Add the finished trees this party has not counted yet; refuse questions out of step."""
        if not query.new_trees:
            return
        expected = query.tree - len(query.new_trees)
        if expected != self.trees_added:
            raise ValueError(
                f"out of step: asked about tree {query.tree} after {len(query.new_trees)} new "
                f"trees, but this party has added {self.trees_added}"
            )
        for i, tree in enumerate(query.new_trees, start=expected):
            # The rows already sit in the leaves of the tree as this party last grew it.
            grown = self.growing.pop(i, None)
            if grown is None:
                node = histtree.leaves(tree, self.x32)
            else:
                node = histtree.descend(grown.tree, tree, grown.node, self.x32)
            self.margin += tree["value"][node]
            if len(self.y_val):
                x32_val = np.asarray(self.x_val, dtype=np.float32)
                self.margin_val += tree["value"][histtree.leaves(tree, x32_val)]
        self.trees_added += len(query.new_trees)

    def _start_tree(self, tree: int, clip: float) -> _Growing:
        """Gradients and Hessians of squared error for a new tree, under its row weights;
        bounded per row with a `clip` (local DP)."""
        s = self.settings
        weights = np.ones(self.rows)
        draw = uniform(self.keys, s.seed, tree)
        if s.forest:
            weights = np.searchsorted(POISSON_CDF, draw, side="right").astype(np.float64)
        elif s.subsample < 1:
            weights = (draw < s.subsample).astype(np.float64)
        if clip:
            return _Growing(*histnoise.bounded(self.margin - self.y, weights, clip))
        return _Growing((self.margin - self.y) * weights, weights)


class _Growing:
    """A tree being grown here: its rows' gradients and Hessians, the tree's structure as the
    questions so far built it and the node each row sits in within it (kept between questions,
    so a level costs the rows that move, not the depth)."""

    def __init__(self, grad: np.ndarray, hess: np.ndarray) -> None:
        self.grad, self.hess = grad, hess
        # Every row's Hessian is 1 (boosting without a subsample): histograms count rows.
        self.unit = bool((hess == 1).all())
        self.tree: Member | None = None
        self.node = np.zeros(len(grad), dtype=np.intp)

    @property
    def nodes(self) -> int:
        return len(self.tree["children_left"]) if self.tree is not None else 0

    def grow(self, tree: Member, x32: np.ndarray) -> _Growing:
        """Take `tree`, the one held with new splits under its leaves (`histtree.extend`), and
        move the rows of the nodes split into their children; the rest stay where they sat."""
        self.tree = tree
        self.node = histtree.leaves(tree, x32, self.node)
        return self

    def rows_asked(self, asked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows in the `asked` nodes and their positions in it."""
        slot = histtree.slots(self.tree, asked, self.node)
        rows = np.flatnonzero(slot >= 0)
        return rows, slot[rows]


# Poisson(1)'s cumulative probabilities: a uniform draw's bin is a bootstrap weight.
POISSON_CDF = np.cumsum(np.exp(-1.0) / np.cumprod([1.0, *range(1, 20)]))
GOLDEN = 0x9E3779B97F4A7C15


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every bit of the input moves every bit of the output."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_keys(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A 64-bit key per row from the bits of its values as float32, as trees see them (so the
    last bits of a value recomputed elsewhere do not change the key)."""
    values = np.ascontiguousarray(np.column_stack([x, y]), dtype=np.float32)
    bits = values.view(np.uint32).astype(np.uint64)
    keys = np.zeros(len(bits), dtype=np.uint64)
    for column in bits.T:
        keys = _mix(keys ^ column)
    return keys


def uniform(keys: np.ndarray, *salt: int) -> np.ndarray:
    """A uniform draw in [0, 1) per key, a different one for every salt."""
    z = keys
    for value in salt:
        z = _mix(z ^ np.uint64(value * GOLDEN % 2**64))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def summed(parties: list[Party]) -> Ask:
    """Ask every party in this process and add up their answers, as the server would."""

    def ask(query: Query) -> Arrays:
        answers = [p.answer(query) for p in parties]
        return {name: sum(a[name] for a in answers) for name in answers[0]}

    return ask


def fit_parties(
    parties: list[Party],
    mean: np.ndarray,
    std: np.ndarray,
    base_score: float,
    settings: TreeSettings,
) -> Grown:
    """Grow an ensemble over parties in this process: the federation without the wire.
    `mean` and `std` are the federation's, of the features; `base_score` the target's mean."""
    ask = summed(parties)
    sketch = ask(sketch_query(mean, std))["sketch"]
    return grow(ask, sketch, mean, std, base_score, settings)


def fit_union(x: np.ndarray, y: np.ndarray, settings: TreeSettings) -> Grown:
    """The centralised version: one party holding every row."""
    party = Party(x, y, settings)
    return fit_parties([party], x.mean(axis=0), x.std(axis=0), float(np.mean(y)), settings)
