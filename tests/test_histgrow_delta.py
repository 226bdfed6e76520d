"""A level question carries only the splits since the question before: a party adds them to the
tree it holds, and refuses, with the reason, splits that do not follow on what it holds."""

import numpy as np
import pytest

from common.models import histgrow, histtree
from common.models.checks import UpdateError
from common.models.histgrow import ROOT, Growing, Query, TreeSettings, TreeStep
from common.models.histparty import Party
from tests.test_gbdt import N_FEATURES, data

LEVEL = TreeStep.from_config({"tree_step": "level"})


def over_the_wire(query: Query) -> Query:
    return Query.from_wire(LEVEL, 0.0, query.arrays(), N_FEATURES, 256)


def test_the_splits_a_party_adds_up_to_the_tree_the_server_grew():
    rng = np.random.default_rng(3)
    tree = histgrow._Tree(0, histtree.TreeBuilder(histtree.Rule(1, 1, 1)))
    tree.builder.count[0] = 1000
    held = None
    for _ in range(6):
        asked = tree.question(ROOT)  # the asked nodes do not matter here
        got = over_the_wire(Query("level", grow=[asked])).grow[0]
        held = histtree.extend(held, got.node, got.feature, got.threshold)
        whole = tree.builder.arrays()
        assert set(held) == {"children_left", "children_right", "feature", "threshold"}
        for k in held:
            assert held[k].dtype == whole[k].dtype
            np.testing.assert_array_equal(held[k], whole[k])
        # The next level: split some of the leaves, in an order of their own.
        leaves = np.flatnonzero(whole["children_left"] == -1)
        chosen = rng.permutation(leaves)[: max(1, len(leaves) // 2)]
        tree.pairs = []
        for node in chosen:
            if tree.builder.count[node] < 2:
                continue
            f, t = int(rng.integers(N_FEATURES)), float(rng.normal())
            left, right = tree.builder.split(int(node), f, t, tree.builder.count[node] / 2)
            tree.pairs.append((int(node), left, right, left))
    assert len(held["children_left"]) > 10  # five levels of splits checked


def splits(held, index, asked, node, feature, threshold, base=None):
    """A tree's part of a level question: the splits added to the tree `held` (None: a new
    tree), naming the tree they make; `base` the size they claim to follow on."""
    node, feature = np.asarray(node, np.int32), np.asarray(feature, np.int32)
    threshold = np.asarray(threshold, np.float64)
    digest = histtree.digest(histtree.extend(held, node, feature, threshold))
    size = 0 if held is None else len(held["children_left"])
    asked = np.asarray(asked, np.int32)
    return Growing(index, asked, size if base is None else base, node, feature, threshold, digest)


# The tree a party holds after its root and the root's split, and that tree with node 1 split.
DEPTH_ONE = histtree.extend(None, ROOT, ROOT, np.array([0.5]))
OTHER_ONE = histtree.extend(None, ROOT, ROOT, np.array([-0.5]))
DEPTH_TWO = histtree.extend(DEPTH_ONE, np.array([1], np.int32), ROOT, np.array([0.0]))


def a_party_at_depth_one():
    """A party that answered a tree's root and its first split (DEPTH_ONE)."""
    x, y = data(2000)
    party = Party(x, y, TreeSettings(trees=2, max_depth=4, max_bins=16))
    edges = [np.quantile(x[:, f], np.linspace(0.1, 0.9, 9)) for f in range(N_FEATURES)]
    party.answer(Query("level", edges=edges, base_score=0.0, grow=[Growing(0, ROOT)]))
    party.answer(Query("level", grow=[splits(None, 0, [1], [0], [0], [0.5], base=1)]))
    assert histtree.digest(party.growing[0].tree) == histtree.digest(DEPTH_ONE)
    return party


@pytest.mark.parametrize(
    ("growing", "reason"),
    [
        (splits(DEPTH_ONE, 1, [3], [1], [0], [0.0]), "holds no such tree"),
        (splits(DEPTH_TWO, 0, [5], [3], [0], [0.0]), "on 5 nodes, but this party holds 3"),
        (Growing(0, ROOT + 3, 3, ROOT, ROOT, np.array([0.0])), "only a leaf"),
        # The same splits on another tree of the same size: the tree named is not this one.
        (splits(OTHER_ONE, 0, [3], [1], [0], [0.0]), "digest differs"),
    ],
)
def test_splits_on_the_wrong_base_or_an_unknown_tree_are_refused_and_change_nothing(
    growing, reason
):
    party = a_party_at_depth_one()
    before = {k: v.copy() for k, v in party.growing[0].tree.items()}
    node = party.growing[0].node.copy()
    with pytest.raises(ValueError, match=reason):
        party.answer(Query("level", grow=[growing]))
    held = party.growing[0]
    assert all(np.array_equal(held.tree[k], before[k]) for k in before)
    assert np.array_equal(held.node, node)
    # The question that does follow on it is still answered.
    party.answer(Query("level", grow=[splits(DEPTH_ONE, 0, [3], [1, 2], [0, 0], [1.0, 1.0])]))
    assert party.growing[0].nodes == 7


def test_splitting_one_node_twice_is_refused():
    with pytest.raises(UpdateError, match="distinct"):
        histtree.extend(DEPTH_ONE, np.array([1, 1], np.int32), ROOT[[0, 0]], np.zeros(2))


def test_a_new_tree_starts_from_its_root_whatever_was_held():
    party = a_party_at_depth_one()
    party.answer(Query("level", grow=[Growing(0, ROOT)]))  # the root asked again
    assert party.growing[0].nodes == 1
    assert not party.growing[0].node.any()


def wire(**change):
    grown = splits(None, 0, [2], [0], [0], [0.5], base=1)
    return {**Query("level", grow=[grown]).arrays(), **change}


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        (wire(split_node=np.array([0], np.int64)), "1-d arrays"),
        (wire(grow_base=np.array([], np.int32)), "one entry per tree"),
        (wire(split_counts=np.array([2], np.int32)), "add up to the entries"),
        (wire(split_feature=np.array([N_FEATURES], np.int32)), "feature in"),
        (wire(split_threshold=np.array([np.nan])), "finite threshold"),
        (wire(split_node=np.array([1], np.int32)), "nodes the tree had before"),
        (wire(asked=np.array([3], np.int32)), "nodes of the tree being grown"),
        (wire(grow_base=np.array([-1], np.int32)), "non-negative"),
        ({k: v for k, v in wire().items() if k != "split_threshold"}, "1-d arrays"),
        (wire(grow_digest=np.zeros((1, 16), np.uint8)), "'grow_digest' must be uint8"),
    ],
)
def test_a_malformed_question_is_refused_with_its_reason(arrays, reason):
    with pytest.raises(UpdateError, match=reason):
        Query.from_wire(LEVEL, 0.0, arrays, N_FEATURES, 256)


def test_only_the_ensembles_first_question_brings_the_edges_and_a_party_without_them_refuses():
    x, y = data(2000)
    settings = TreeSettings(trees=3, max_depth=2)
    party = Party(x, y, settings)
    questions = []

    def ask(query):
        questions.append(query)
        return party.answer(query)

    sketch = ask(histgrow.sketch_query(x.mean(axis=0), x.std(axis=0)))["sketch"]
    histgrow.grow(ask, sketch, x.mean(axis=0), x.std(axis=0), float(np.mean(y)), settings)
    roots = [q for q in questions if q.step == "level" and q.grow and q.grow[0].base == 0]
    assert [q.edges is not None for q in roots] == [True, False, False]
    # A party that has not seen this ensemble's first question holds no edges for it.
    fresh = Party(x, y, settings)
    with pytest.raises(ValueError, match="must bring the bin edges"):
        fresh.answer(roots[1])
    # Nor may one that held an ensemble before use that one's edges for the next.
    party.answer(questions[0])
    with pytest.raises(ValueError, match="must bring the bin edges"):
        party.answer(roots[1])


def test_a_questions_trees_come_apart_as_sent_and_a_question_may_ask_of_none():
    grow = [
        Growing(
            3,
            np.array([1, 2], np.int32),
            3,
            np.array([1, 2], np.int32),
            np.array([0, 3], np.int32),
            np.array([0.5, -1.0]),
        ),
        Growing(5, ROOT),
        Growing(
            8,
            np.array([2], np.int32),
            1,
            np.array([0], np.int32),
            np.array([2], np.int32),
            np.array([3.0]),
        ),
    ]
    back = over_the_wire(Query("level", grow=grow)).grow
    assert [g.index for g in back] == [3, 5, 8]
    for sent, read in zip(grow, back, strict=True):
        for name in ("asked", "node", "feature", "threshold"):
            assert np.array_equal(getattr(read, name), getattr(sent, name))
    assert over_the_wire(Query("level")).grow == []
