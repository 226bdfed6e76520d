"""Growing a whole ensemble from summed histograms, knowing nothing of rows or transport.

The grower asks questions (`Query`) and gets back the sum of every party's answer: first a
sketch for the bin edges, then, per depth level, the histograms of the open nodes — all open
nodes of a level in one question, of one boosted tree or of many trees of a forest at once. Over
gRPC a question is one phase of tasks; in one process it is a sum over parties
(`common.models.histparty`), and the centralised baseline is the same grower over a single party
holding the union of the rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from common.models import histtree
from common.models.checks import UpdateError, check_arrays
from common.models.ensemble import Member
from common.models.forest import TREES
from common.settings import TaskSettings, typed
from common.tensors import Arrays
from common.wire import ConfigScalar


@dataclass(frozen=True)
class TreeSettings:
    """What a user of XGBoost or LightGBM sets; the defaults are XGBoost's.

    `forest` grows a random forest instead (rf-hist): each tree on Poisson(1) weights of every
    party's rows, no boosting, leaves averaged over the trees, `max_features` per split.
    """

    trees: int = 100
    learning_rate: float = 0.3
    max_depth: int = 6
    max_bins: int = 256
    reg_lambda: float = 1.0
    min_child_weight: float = 1.0
    subsample: float = 1.0
    # Trees without a better validation MSE before growing stops; 0 grows them all.
    early_stopping: int = 0
    validation_fraction: float = 0.1
    seed: int = 0
    forest: bool = False
    max_features: float = 1.0

    def __post_init__(self) -> None:
        problems = [
            text
            for ok, text in (
                (self.trees >= 1, "trees must be at least 1"),
                (0 < self.learning_rate <= 1, "learning rate must lie in (0, 1]"),
                (self.max_depth >= 1, "max depth must be at least 1"),
                (2 <= self.max_bins <= 65536, "max bins must lie in [2, 65536]"),
                (0 <= self.reg_lambda < math.inf, "lambda must be non-negative"),
                # Hessians here are (weighted) row counts: a child needs at least one row.
                (1 <= self.min_child_weight < math.inf, "min child weight must be at least 1"),
                (0 < self.subsample <= 1, "subsample must lie in (0, 1]"),
                (self.early_stopping >= 0, "early stopping must be non-negative"),
                (0 < self.validation_fraction < 1, "validation fraction must lie in (0, 1)"),
                (0 < self.max_features <= 1, "max features must lie in (0, 1]"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, ConfigScalar], prefix: str) -> TreeSettings:
        """Settings from `{prefix}{field}` keys (a task config); missing keys keep defaults, a
        value of the wrong kind is refused by its key, as every task setting is."""
        kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        return cls(
            **{
                name: typed(prefix + name, values[prefix + name], (kind,))
                for name, kind in kinds.items()
                if prefix + name in values
            }
        )

    def to_mapping(self, prefix: str) -> dict[str, object]:
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def holds_out(self) -> float:
        """The share of each party's rows kept for validation (only with early stopping)."""
        return self.validation_fraction if self.early_stopping and not self.forest else 0.0

    def rule(self) -> histtree.Rule:
        shrink = 1.0 / self.trees if self.forest else self.learning_rate
        return histtree.Rule(self.reg_lambda, self.min_child_weight, shrink)


@dataclass(frozen=True)
class TreeModel:
    """A model name, where its settings sit in a task config, its defaults, and the settings
    a user may change (each a flag `--{prefix}{name}` of the server and the baselines)."""

    name: str
    prefix: str
    defaults: TreeSettings
    settable: tuple[str, ...]

    def settings(self, values: Mapping[str, object]) -> TreeSettings:
        """The defaults with the settable values in `values` (keys with the prefix)."""
        wanted = {n: values[self.prefix + n] for n in self.settable if self.prefix + n in values}
        return replace(self.defaults, **wanted)


# rf-hist's defaults: a forest of deep trees on Poisson bootstraps, leaves unregularised.
FOREST = TreeSettings(trees=50, max_depth=8, reg_lambda=0.0, forest=True)
TREE_MODELS = {
    m.name: m
    for m in (
        TreeModel(
            "gbdt",
            "gbdt_",
            TreeSettings(),
            (
                "trees",
                "learning_rate",
                "max_depth",
                "max_bins",
                "reg_lambda",
                "min_child_weight",
                "subsample",
                "early_stopping",
                "validation_fraction",
                "seed",
            ),
        ),
        TreeModel(
            "rf-hist",
            "rfh_",
            FOREST,
            ("trees", "max_depth", "max_bins", "min_child_weight", "max_features", "seed"),
        ),
    )
}

ROOT = np.array([0], dtype=np.int32)
_NONE = np.zeros(0, dtype=np.int32)


@dataclass(frozen=True)
class Growing:
    """One tree of a level question: its number, the nodes asked, and what the tree gained
    since the question before, which the party holds (so no question carries a tree whole).

    `base` is how many nodes the tree had when last asked about; 0 for a tree not asked about
    before, which starts from its root. `node`, `feature` and `threshold` are the leaves split
    since, in the order split; their children are numbered on from `base` (left, right), as
    `histtree.TreeBuilder` numbers them. A node not split stays a leaf: nothing says so.
    `digest` is the tree's with them (`histtree.digest`), which the party checks its own
    against.
    """

    index: int
    asked: np.ndarray
    base: int = 0
    node: np.ndarray = field(default_factory=lambda: _NONE)
    feature: np.ndarray = field(default_factory=lambda: _NONE)
    threshold: np.ndarray = field(default_factory=lambda: np.zeros(0))
    digest: bytes = histtree.ROOT_DIGEST

    @property
    def nodes(self) -> int:
        """How many nodes the tree has with these splits."""
        return max(self.base, 1) + 2 * len(self.node)


@dataclass(frozen=True)
class TreeStep(TaskSettings):
    """Which question a task asks: the sketch, or a level of tree `tree_index`; `tree_score`
    asks for the validation rows' squared error too."""

    tree_step: str = ""
    tree_index: int = 0
    tree_score: bool = False


@dataclass(frozen=True)
class Query:
    """One question to every party; `step` is 'sketch' or 'level'.

    A level question names the trees being grown (`grow`: each one's splits since the
    question before, and the nodes whose histograms are wanted in it), one tree for boosting,
    many at once for a forest, whose trees are independent. With a tree's first level it also
    carries the finished trees a party has not yet added to its predictions (`tree` counts the
    trees before), and with the ensemble's first the bin edges and the base score. With
    `score` a party also returns its validation rows' squared error. Under local DP `clip`
    bounds each row's gradient (common/models/histnoise.py); 0 without.
    """

    step: str
    tree: int = 0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    edges: list[np.ndarray] | None = None
    base_score: float | None = None
    new_trees: list[Member] = field(default_factory=list)
    grow: list[Growing] = field(default_factory=list)
    score: bool = False
    clip: float = 0.0
    # The depth of the nodes asked: the server's bookkeeping of where growing is, not sent.
    depth: int = 0

    @property
    def asked(self) -> int:
        """How many nodes' histograms answer the question."""
        return sum(len(g.asked) for g in self.grow)

    def config(self) -> dict[str, ConfigScalar]:
        return TreeStep(self.step, self.tree, self.score).to_config()

    def arrays(self) -> Arrays:
        if self.step == "sketch":
            return {"mean": self.mean, "std": self.std}
        trees = self.grow
        out: Arrays = {
            "grow_index": np.array([g.index for g in trees], dtype=np.int32),
            "grow_base": np.array([g.base for g in trees], dtype=np.int32),
            "asked": np.concatenate([_NONE, *(g.asked for g in trees)]),
            "asked_counts": np.array([len(g.asked) for g in trees], dtype=np.int32),
            "split_node": np.concatenate([_NONE, *(g.node for g in trees)]),
            "split_feature": np.concatenate([_NONE, *(g.feature for g in trees)]),
            "split_threshold": np.concatenate([np.zeros(0), *(g.threshold for g in trees)]),
            "split_counts": np.array([len(g.node) for g in trees], dtype=np.int32),
            "grow_digest": np.frombuffer(b"".join(g.digest for g in trees), np.uint8).reshape(
                len(trees), DIGEST
            ),
        }
        out.update(TREES.pack(self.new_trees))
        if self.edges is not None:
            out.update(histtree.pack_edges(self.edges))
        if self.base_score is not None:
            out["base_score"] = np.array([self.base_score])
        return out

    @classmethod
    def from_wire(
        cls, told: TreeStep, clip: float, arrays: Arrays, n_features: int, max_bins: int
    ) -> Query:
        """A question from the server, every array checked before use; `clip` bounds each
        row's gradient under local DP (0: unbounded)."""
        step = told.tree_step
        if step == "sketch":
            check_arrays(arrays, {"mean": (n_features,), "std": (n_features,)})
            return cls(step, mean=arrays["mean"], std=arrays["std"])
        if step != "level":
            raise UpdateError(f"unknown tree step {step!r}; expected 'sketch' or 'level'")
        tree_fields = {k: v for k, v in arrays.items() if k.startswith(TREES.kind + ".")}
        new_trees = TREES.unpack(tree_fields, n_features) if tree_fields else []
        edges = histtree.unpack_edges(arrays, n_features, max_bins) if "edges" in arrays else None
        base = arrays.get("base_score")
        return cls(
            step,
            tree=told.tree_index,
            edges=edges,
            base_score=float(base[0]) if base is not None else None,
            new_trees=new_trees,
            grow=_growing(arrays, n_features),
            score=told.tree_score,
            clip=clip,
        )


# A level question's arrays: one entry per tree, per asked node, per split; a tree's digest.
PER_TREE = ("grow_index", "grow_base", "asked_counts", "split_counts")
DIGEST = 32
SPLITS = {"split_node": np.int32, "split_feature": np.int32, "split_threshold": np.float64}


def _growing(arrays: Arrays, n_features: int) -> list[Growing]:
    """The trees of a level question with their asked nodes and new splits; UpdateError
    unless every tree has a distinct number, and its splits and asked nodes are nodes it
    can have. Whether the splits follow on the tree a party holds is the party's to check."""
    kinds = {**dict.fromkeys((*PER_TREE, "asked"), np.int32), **SPLITS}
    if any(arrays.get(k) is None or arrays[k].ndim != 1 for k in kinds) or any(
        arrays[k].dtype != kind for k, kind in kinds.items()
    ):
        raise UpdateError(f"a level question needs the 1-d arrays {sorted(kinds)}")
    index, base, counts, splits = (arrays[k] for k in PER_TREE)
    if any(len(a) != len(index) for a in (base, counts, splits)):
        raise UpdateError(f"{list(PER_TREE)} must have one entry per tree being grown")
    digests = arrays.get("grow_digest")
    if digests is None or digests.dtype != np.uint8 or digests.shape != (len(index), DIGEST):
        raise UpdateError(f"'grow_digest' must be uint8 of shape ({len(index)}, {DIGEST})")
    if len(set(index.tolist())) < len(index):
        raise UpdateError("'grow_index' must number each tree being grown once")
    if (counts < 0).any() or counts.sum() != len(arrays["asked"]):
        raise UpdateError("'asked_counts' must add up to the asked nodes")
    if (base < 0).any() or (splits < 0).any():
        raise UpdateError("'grow_base' and 'split_counts' must be non-negative")
    if any(splits.sum() != len(arrays[k]) for k in SPLITS):
        raise UpdateError(f"'split_counts' must add up to the entries of {sorted(SPLITS)}")
    feature, threshold = arrays["split_feature"], arrays["split_threshold"]
    if ((feature < 0) | (feature >= n_features)).any() or not np.isfinite(threshold).all():
        raise UpdateError(f"a split needs a feature in [0, {n_features}) and a finite threshold")
    asked, split = _bounds(counts), _bounds(splits)
    parts = {
        k: [arrays[k][start:end] for start, end in b]
        for k, b in (("asked", asked), *((k, split) for k in SPLITS))
    }
    grow = [
        Growing(int(i), a, int(b), n, f, t, d.tobytes())
        for i, b, d, a, n, f, t in zip(index, base, digests, *parts.values(), strict=True)
    ]
    for g in grow:
        if ((g.node < 0) | (g.node >= max(g.base, 1))).any():
            raise UpdateError("'split_node' must list nodes the tree had before its splits")
        if ((g.asked < 0) | (g.asked >= g.nodes)).any():
            raise UpdateError("'asked' must list nodes of the tree being grown")
    return grow


def _bounds(counts: np.ndarray) -> list[tuple[int, int]]:
    """Where each tree's entries start and end, from their counts: slices, which cost a
    question's check a fraction of what `np.split` did (most questions ask of one tree)."""
    ends = np.cumsum(counts).tolist()
    return list(zip([0, *ends][:-1], ends, strict=True))


def answer_shapes(query: Query, n_features: int, max_bins: int) -> dict[str, tuple[int, ...]]:
    """The tensors that answer `query`, by name and shape."""
    if query.step == "sketch":
        return {"sketch": (n_features, histtree.CELLS)}
    shape = (query.asked, n_features, max_bins)
    expected = {"grad": shape, "hess": shape}
    if query.score:
        expected.update(val_sse=(), val_rows=())
    return expected


def check_answer(arrays: Arrays, query: Query, n_features: int, max_bins: int) -> None:
    """UpdateError unless `arrays` answers `query`: sums of exactly the asked shapes."""
    check_arrays(arrays, answer_shapes(query, n_features, max_bins))


# A compact answer in the clear: the histograms' nonzero entries only, at these flat positions.
AT = "at"
HISTOGRAMS = ("grad", "hess")


def compact(answer: Arrays) -> Arrays:
    """`answer` with its histograms as their nonzero entries (deep nodes' are mostly empty),
    for the clear only: masks and noise make every entry nonzero."""
    if "grad" not in answer or answer["grad"].size >= 2**31:
        return answer
    at = np.flatnonzero((answer["grad"] != 0) | (answer["hess"] != 0))
    out = {k: v for k, v in answer.items() if k not in HISTOGRAMS}
    out.update({name: answer[name].ravel()[at] for name in HISTOGRAMS})
    out[AT] = at.astype(np.int32)
    return out


def check_compact(arrays: Arrays, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """UpdateError unless a compact answer's positions rise strictly within the histograms'
    shape and every tensor is as the question asked."""
    if "grad" not in shapes:
        raise UpdateError(f"'{AT}' answers histograms only")
    at, shape = arrays[AT], shapes["grad"]
    ends = at[[0, -1]] if at.ndim == 1 and at.size else at[:0]
    size = math.prod(shape)
    if at.dtype != np.int32 or at.ndim != 1 or not all(0 <= int(p) < size for p in ends):
        raise UpdateError(f"'{AT}' must be int32 positions within the histograms {shape}")
    if (np.diff(at.astype(np.int64)) <= 0).any():
        raise UpdateError(f"'{AT}' must rise strictly")
    values = {k: v for k, v in arrays.items() if k != AT}
    check_arrays(values, {**shapes, **dict.fromkeys(HISTOGRAMS, at.shape)})


def expand(arrays: Arrays, shapes: Mapping[str, tuple[int, ...]]) -> Arrays:
    """A checked compact answer as the dense one."""
    return add_up([arrays], shapes)


def add_up(answers: list[Arrays], shapes: Mapping[str, tuple[int, ...]]) -> Arrays:
    """The sum of checked answers, dense or compact, added in the order given (so a sum
    repeats to the last bit): each histogram entry is 0 + the first's + the second's …,
    whichever way the answers travelled, without expanding a compact one first."""
    total: Arrays = {}
    for name, shape in shapes.items():
        if name not in HISTOGRAMS:
            total[name] = sum(a[name] for a in answers)
            continue
        positions = [a[AT] if AT in a else np.arange(math.prod(shape)) for a in answers]
        values = [a[name].ravel() for a in answers]
        flat = np.bincount(
            np.concatenate(positions), np.concatenate(values), minlength=math.prod(shape)
        )
        total[name] = flat.reshape(shape)
    return total


Ask = Callable[[Query], Arrays]


class Lost(RuntimeError):
    """A party left while a question was out: that question's sums are lost, and the parties
    still in are asked on (the asker has stopped asking the one that left)."""


def ask_again(ask: Ask, query: Query) -> Arrays:
    """`query`'s summed answers; when they are lost, the same question asked of the parties
    still in, who have already counted the finished trees it brought. Only for a question that
    starts something (the sketch, a tree's root, the last score), so no sum of it exists."""
    while True:
        try:
            return ask(query)
        except Lost:
            query = replace(query, new_trees=[])


@dataclass
class Grown:
    """An ensemble and how it was grown."""

    base_score: float
    trees: list[Member]
    edges: list[np.ndarray]
    validation_mse: list[float] = field(default_factory=list)
    exchanges: int = 0
    # Trees finished short of their depth when a party left mid-tree: (tree, depth).
    cut: list[tuple[int, int]] = field(default_factory=list)

    def arrays(self) -> Arrays:
        return histtree.pack_model(self.base_score, self.trees)


def sketch_query(mean: np.ndarray, std: np.ndarray) -> Query:
    return Query("sketch", mean=np.asarray(mean, dtype=np.float64), std=np.asarray(std))


def grow(
    ask: Ask,
    sketch: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    base_score: float,
    settings: TreeSettings,
) -> Grown:
    """Edges from the summed `sketch`, then every tree, level by level, from summed answers:
    boosted trees one after another, a forest's trees many at a time (`batch`)."""
    edges = histtree.edges_from_sketch(sketch, mean, std, settings.max_bins)
    rule = settings.rule()
    grown = Grown(base_score, [], edges)
    early = bool(settings.holds_out)
    size = batch(settings, len(edges))
    for first in range(0, settings.trees, size):
        trees = [
            _Tree(t, histtree.TreeBuilder(rule))
            for t in range(first, min(first + size, settings.trees))
        ]
        pending = [] if settings.forest or not grown.trees else [grown.trees[-1]]
        # The parties keep the edges and the base score from the ensemble's first question.
        query = Query(
            "level",
            first,
            edges=edges if first == 0 else None,
            base_score=base_score if first == 0 else None,
            new_trees=pending,
            grow=[t.question(ROOT) for t in trees],
            score=early and first > 0,
        )
        answer = ask_again(ask, query)
        grown.exchanges += 1
        if query.score and _scored(grown, answer, settings):
            break
        _grow_trees(ask, trees, answer, settings, first, grown)
        grown.trees.extend(t.builder.arrays() for t in trees)
    else:
        if early:
            last = Query("level", settings.trees, new_trees=grown.trees[-1:], score=True)
            _scored(grown, ask_again(ask, last), settings)
            grown.exchanges += 1
    if early:
        grown.trees = grown.trees[: 1 + int(np.argmin(grown.validation_mse))]
    return grown


# The largest answer a level question of a forest may ask for: trees grown together share
# their exchanges, up to this many bytes of histograms per party.
BATCH_BYTES = 256 << 20


def batch(settings: TreeSettings, n_features: int) -> int:
    """How many trees grow together: one when boosting (each tree fits the ones before), as
    many of a forest's as keep a level's largest possible answer within `BATCH_BYTES`."""
    if not settings.forest:
        return 1
    # A level asks for the smaller child of each split: at most 2^(depth − 2) nodes per tree.
    widest = 2 ** max(settings.max_depth - 2, 0) * n_features * settings.max_bins * 16
    return max(1, min(settings.trees, BATCH_BYTES // widest))


def _scored(grown: Grown, answer: Arrays, settings: TreeSettings) -> bool:
    """Record the validation MSE of the trees so far; True once the best is
    `early_stopping` trees behind."""
    grown.validation_mse.append(float(answer["val_sse"]) / max(float(answer["val_rows"]), 1.0))
    scores = grown.validation_mse
    return len(scores) - 1 - int(np.argmin(scores)) >= settings.early_stopping


@dataclass
class _Tree:
    """One tree being grown: its builder, its open nodes and their summed histograms (`grad`,
    `hess`: one array of (open nodes, features, bins) in `open_nodes`' order), and the splits
    of its last level as (parent, left, right, the child asked for) with the parent's place
    among the open nodes (`at`) and the children's sums as the split found them (left G, H;
    right G, H); `held`, how many nodes the parties hold of it (as the last question left
    it)."""

    index: int
    builder: histtree.TreeBuilder
    held: int = 0
    open_nodes: list[int] = field(default_factory=lambda: [0])
    grad: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    hess: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    pairs: list[tuple[int, int, int, int]] = field(default_factory=list)
    at: list[int] = field(default_factory=list)
    sums: list[tuple[float, float, float, float]] = field(default_factory=list)

    def question(self, asked: np.ndarray) -> Growing:
        """The tree's part of the next question: the nodes `asked` and the splits of the last
        level, which follow on what the parties hold (at the root, nothing)."""
        node = np.array([p[0] for p in self.pairs], dtype=np.int32)
        b = self.builder
        feature = np.array([b.feature[n] for n in node], dtype=np.int32)
        threshold = np.array([b.threshold[n] for n in node], dtype=np.float64)
        digest = histtree.digest(b.arrays())
        growing = Growing(self.index, asked, self.held, node, feature, threshold, digest)
        self.held = len(b.left)
        return growing

    def split(self, settings: TreeSettings, edges: list[np.ndarray], last: bool) -> np.ndarray:
        """Settle the open nodes, split those with a positive gain, and return the smaller
        child of each split to ask for; on the `last` level the children are settled from
        their parents' split sums and nothing is asked. Empty once the tree is done."""
        builder = self.builder
        allowed = _allowed(settings, self.index, self.open_nodes, len(edges))
        counts = np.array([len(e) for e in edges])
        splits = histtree.best_splits(self.grad, self.hess, builder.rule, allowed, counts)
        totals_g, totals_h = splits.total_grad, splits.total_hess
        for node, g, h in zip(self.open_nodes, totals_g, totals_h, strict=True):
            builder.settle(node, g, h)
        self.pairs, self.at, self.sums = [], [], []
        for i, node in enumerate(self.open_nodes):
            # A node of one row cannot split; only noised sums (local DP) make one look splittable.
            if not splits.gain[i] > 0 or builder.count[node] < 2:
                continue
            f, b = int(splits.feature[i]), int(splits.bin[i])
            left, right = builder.split(node, f, float(edges[f][b]), splits.left_hess[i])
            g_left, h_left = splits.left_grad[i], splits.left_hess[i]
            small = left if h_left <= totals_h[i] - h_left else right
            self.pairs.append((node, left, right, small))
            self.at.append(i)
            self.sums.append((g_left, h_left, totals_g[i] - g_left, totals_h[i] - h_left))
        if last:  # the deepest leaves need only their sums, which the splits hold
            self.finish()
        return np.array([p[3] for p in self.pairs], dtype=np.int32)

    def finish(self) -> None:
        """Settle the children of the last splits as leaves, from their parents' split sums,
        and ask for nothing more: the tree ends at this depth."""
        for (_, left, right, _), (g_l, h_l, g_r, h_r) in zip(self.pairs, self.sums, strict=True):
            self.builder.settle(left, g_l, h_l)
            self.builder.settle(right, g_r, h_r)
        self.pairs, self.at, self.sums = [], [], []

    def take(self, grad: np.ndarray, hess: np.ndarray, used: np.ndarray) -> None:
        """The asked children's histograms (their unused bins zeroed by `used`); each
        sibling's is its parent's minus the child's. The children, left then right of each
        split, become the open nodes."""
        parent = np.array(self.at, dtype=np.intp)
        small_left = np.array([p[3] == p[1] for p in self.pairs], dtype=np.bool_)
        self.grad, self.hess = histtree.next_level(
            self.grad, self.hess, grad, hess, parent, small_left, used
        )
        self.open_nodes = [n for p in self.pairs for n in p[1:3]]


def _grow_trees(
    ask: Ask,
    trees: list[_Tree],
    answer: Arrays,
    settings: TreeSettings,
    first: int,
    grown: Grown,
) -> None:
    """Grow trees together from their roots' histograms: per level, every tree splits its
    open nodes and one question asks for the smaller children of all of them."""
    used = histtree.used_bins(grown.edges, settings.max_bins)
    for i, tree in enumerate(trees):
        tree.grad, tree.hess = answer["grad"][i : i + 1] * used, answer["hess"][i : i + 1] * used
    for depth in range(settings.max_depth):
        last = depth + 1 == settings.max_depth
        asked = [(t, t.split(settings, grown.edges, last)) for t in trees]
        trees = [t for t, nodes in asked if len(nodes)]
        if not trees:
            return
        query = Query(
            "level",
            first,
            grow=[t.question(a) for t, a in asked if len(a)],
            depth=depth + 1,
        )
        try:
            answer = ask(query)
        except Lost:
            # The level's sums are lost with the party that left; asking the survivors again
            # would let their sum be taken from the ones before, which had it: so the trees
            # end here, their last children leaves from the sums the server already holds.
            for tree in trees:
                tree.finish()
                grown.cut.append((tree.index, depth + 1))
            return
        grown.exchanges += 1
        at = 0
        for tree in trees:
            rows = slice(at, at + len(tree.pairs))
            tree.take(answer["grad"][rows], answer["hess"][rows], used)
            at = rows.stop


def _allowed(settings: TreeSettings, tree: int, nodes: list[int], n_features: int) -> np.ndarray:
    """Which features each node may split on: all, or a seeded draw per node (a forest's)."""
    allowed = np.ones((len(nodes), n_features), dtype=bool)
    if settings.max_features >= 1:
        return allowed
    take = max(1, round(settings.max_features * n_features))
    for i, node in enumerate(nodes):
        rng = np.random.default_rng([settings.seed, tree, node])
        allowed[i] = False
        allowed[i, rng.choice(n_features, take, replace=False)] = True
    return allowed
