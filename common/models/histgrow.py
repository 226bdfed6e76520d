"""Growing a whole ensemble from summed histograms, knowing nothing of rows or transport.

The grower asks questions (`Query`) and gets back the sum of every party's answer: first a
sketch for the bin edges, then, per tree and depth level, the histograms of the open nodes —
all open nodes of a level in one question. Over gRPC a question is one phase of tasks; in one
process it is a sum over parties (`common.models.histparty`), and the centralised baseline is
the same grower over a single party holding the union of the rows.
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
from common.tensors import Arrays


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
    def from_mapping(cls, values: Mapping[str, object], prefix: str) -> TreeSettings:
        """Settings from `{prefix}{field}` keys (a task config); missing keys keep defaults."""
        kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        return cls(
            **{
                name: kind(values[prefix + name])
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

GROW = "grow."


@dataclass(frozen=True)
class Query:
    """One question to every party; `step` is 'sketch' or 'level'.

    A level question names the tree being grown (`tree`, as it stands), the nodes whose
    histograms are wanted (`asked`), and, with a tree's first level, the bin edges, the base
    score and the finished trees a party has not yet added to its predictions. With `score` a
    party also returns its validation rows' squared error.
    """

    step: str
    tree: int = 0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    edges: list[np.ndarray] | None = None
    base_score: float | None = None
    new_trees: list[Member] = field(default_factory=list)
    grow: Member | None = None
    asked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    score: bool = False

    def config(self) -> dict[str, object]:
        return {"tree_step": self.step, "tree_index": self.tree, "tree_score": self.score}

    def arrays(self) -> Arrays:
        if self.step == "sketch":
            return {"mean": self.mean, "std": self.std}
        out: Arrays = {"asked": np.asarray(self.asked, dtype=np.int32)}
        out.update({GROW + k: v for k, v in (self.grow or {}).items()})
        out.update(TREES.pack(self.new_trees))
        if self.edges is not None:
            out.update(histtree.pack_edges(self.edges))
        if self.base_score is not None:
            out["base_score"] = np.array([self.base_score])
        return out

    @classmethod
    def from_wire(
        cls, config: Mapping[str, object], arrays: Arrays, n_features: int, max_bins: int
    ) -> Query:
        """A question from the server, every array checked before use."""
        step = str(config.get("tree_step", ""))
        if step == "sketch":
            check_arrays(arrays, {"mean": (n_features,), "std": (n_features,)})
            return cls(step, mean=arrays["mean"], std=arrays["std"])
        if step != "level":
            raise UpdateError(f"unknown tree step {step!r}; expected 'sketch' or 'level'")
        grow = {k.removeprefix(GROW): v for k, v in arrays.items() if k.startswith(GROW)}
        tree_fields = {k: v for k, v in arrays.items() if k.startswith(TREES.kind + ".")}
        new_trees = TREES.unpack(tree_fields, n_features) if tree_fields else []
        if grow:
            TREES.check(grow, n_features, "the tree being grown")
        asked = arrays.get("asked")
        nodes = len(grow.get("children_left", ())) if grow else 0
        if asked is None or asked.ndim != 1 or ((asked < 0) | (asked >= max(nodes, 1))).any():
            raise UpdateError("'asked' must list nodes of the tree being grown")
        edges = histtree.unpack_edges(arrays, n_features, max_bins) if "edges" in arrays else None
        base = arrays.get("base_score")
        return cls(
            step,
            tree=int(config.get("tree_index", 0)),
            edges=edges,
            base_score=float(base[0]) if base is not None else None,
            new_trees=new_trees,
            grow=grow or None,
            asked=asked,
            score=bool(config.get("tree_score", False)),
        )


def answer_shapes(query: Query, n_features: int, max_bins: int) -> dict[str, tuple[int, ...]]:
    """The tensors that answer `query`, by name and shape."""
    if query.step == "sketch":
        return {"sketch": (n_features, histtree.CELLS)}
    shape = (len(query.asked), n_features, max_bins)
    expected = {"grad": shape, "hess": shape}
    if query.score:
        expected.update(val_sse=(), val_rows=())
    return expected


def check_answer(arrays: Arrays, query: Query, n_features: int, max_bins: int) -> None:
    """UpdateError unless `arrays` answers `query`: sums of exactly the asked shapes."""
    check_arrays(arrays, answer_shapes(query, n_features, max_bins))


Ask = Callable[[Query], Arrays]


@dataclass
class Grown:
    """An ensemble and how it was grown."""

    base_score: float
    trees: list[Member]
    edges: list[np.ndarray]
    validation_mse: list[float] = field(default_factory=list)
    exchanges: int = 0

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
    """Edges from the summed `sketch`, then every tree, level by level, from summed answers."""
    edges = histtree.edges_from_sketch(sketch, mean, std, settings.max_bins)
    rule = settings.rule()
    grown = Grown(base_score, [], edges)
    early = bool(settings.holds_out)
    for t in range(settings.trees):
        pending = [] if settings.forest or not grown.trees else [grown.trees[-1]]
        builder = histtree.TreeBuilder(rule)
        first = Query(
            "level",
            t,
            edges=edges,
            base_score=base_score,
            new_trees=pending,
            grow=builder.arrays(),
            asked=np.array([0], dtype=np.int32),
            score=early and t > 0,
        )
        answer = ask(first)
        grown.exchanges += 1
        if first.score and _scored(grown, answer, settings):
            break
        _grow_tree(ask, builder, answer, settings, t, grown)
        grown.trees.append(builder.arrays())
    else:
        if early:
            last = Query("level", settings.trees, new_trees=grown.trees[-1:], score=True)
            _scored(grown, ask(last), settings)
            grown.exchanges += 1
    if early:
        grown.trees = grown.trees[: 1 + int(np.argmin(grown.validation_mse))]
    return grown


def _scored(grown: Grown, answer: Arrays, settings: TreeSettings) -> bool:
    """Record the validation MSE of the trees so far; True once the best is
    `early_stopping` trees behind."""
    grown.validation_mse.append(float(answer["val_sse"]) / max(float(answer["val_rows"]), 1.0))
    scores = grown.validation_mse
    return len(scores) - 1 - int(np.argmin(scores)) >= settings.early_stopping


def _grow_tree(
    ask: Ask,
    builder: histtree.TreeBuilder,
    answer: Arrays,
    settings: TreeSettings,
    tree: int,
    grown: Grown,
) -> None:
    """Grow one tree from its root's histograms: per level, split, ask for the smaller child
    of each split and take its sibling as parent minus child; the deepest level's leaves come
    from their parents' split sums, without a question."""
    rule = builder.rule
    hist = {0: (answer["grad"][0], answer["hess"][0])}
    open_nodes = [0]
    for depth in range(settings.max_depth + 1):
        grads = np.stack([hist[n][0] for n in open_nodes])
        hesses = np.stack([hist[n][1] for n in open_nodes])
        totals_g, totals_h = grads[:, 0, :].sum(axis=1), hesses[:, 0, :].sum(axis=1)
        for node, g, h in zip(open_nodes, totals_g, totals_h, strict=True):
            builder.settle(node, g, h)
        if depth == settings.max_depth:
            break
        allowed = _allowed(settings, tree, open_nodes, len(grown.edges))
        splits = histtree.best_splits(grads, hesses, rule, allowed)
        pairs = []
        for i, node in enumerate(open_nodes):
            if not splits.gain[i] > 0:
                continue
            f, b = int(splits.feature[i]), int(splits.bin[i])
            left, right = builder.split(node, f, float(grown.edges[f][b]), splits.left_hess[i])
            small_is_left = splits.left_hess[i] <= totals_h[i] - splits.left_hess[i]
            pairs.append((node, left, right, left if small_is_left else right))
        if not pairs:
            break
        if depth + 1 == settings.max_depth:
            # The last level's leaves need only their sums, which the parents' splits hold.
            for parent, left, right, _ in pairs:
                at = open_nodes.index(parent)
                g_left, h_left = splits.left_grad[at], splits.left_hess[at]
                builder.settle(left, g_left, h_left)
                builder.settle(right, totals_g[at] - g_left, totals_h[at] - h_left)
            break
        asked = np.array([p[3] for p in pairs], dtype=np.int32)
        answer = ask(Query("level", tree, grow=builder.arrays(), asked=asked))
        grown.exchanges += 1
        for i, (parent, left, right, small) in enumerate(pairs):
            other = right if small == left else left
            g, h = answer["grad"][i], answer["hess"][i]
            hist[small] = (g, h)
            hist[other] = (hist[parent][0] - g, hist[parent][1] - h)
        open_nodes = [n for p in pairs for n in p[1:3]]


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
