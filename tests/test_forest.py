"""The forest codec: exact predictions after the wire, and hostile arrays refused before use."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestRegressor

from common.models import forest
from common.models.checks import UpdateError
from common.tensors import Payload, receive
from server.ensemble import EnsembleUnion, forest_quotas
from server.models import build_strategy
from server.strategy import ClientResult

N_FEATURES = 5


def data(rows=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES)) * [1, 10, 100, 0.01, 1e4]
    return x, np.sin(x[:, 0]) + x[:, 1] / 10 + rng.normal(scale=0.1, size=rows)


def over_the_wire(arrays):
    payload = Payload.encode(arrays)
    return receive(payload.header, payload.chunks(1000), max_bytes=1 << 30)


@pytest.mark.parametrize("max_depth", [None, 4])
def test_decoded_trees_predict_exactly_what_scikit_learn_predicted(max_depth):
    x, y = data()
    model = RandomForestRegressor(n_estimators=7, max_depth=max_depth, random_state=1).fit(x, y)
    arrays = forest.forest_to_arrays(forest.tree_arrays(e) for e in model.estimators_)
    trees = forest.forest_from_arrays(over_the_wire(arrays), N_FEATURES)
    x_new, _ = data(seed=2)
    for estimator, tree in zip(model.estimators_, trees, strict=True):
        leaves = forest.leaves(tree, x_new.astype(np.float32))
        np.testing.assert_array_equal(tree["value"][leaves], estimator.predict(x_new))
    np.testing.assert_array_equal(forest.predict_forest(trees, x_new), model.predict(x_new))


def test_fit_forest_grows_table_1_trees_as_arrays():
    x, y = data()
    trees = forest.fit_forest(x, y, n_estimators=3, max_depth=3, random_state=0)
    assert len(trees) == 3
    for tree in trees:
        assert set(tree) == set(forest.TREES.fields)
        assert tree["children_left"].dtype == np.int32 and tree["value"].dtype == np.float64
        assert len(tree["value"]) <= 15  # depth 3
    assert forest.TABLE_1["n_estimators"] == 100 and forest.TABLE_1["bootstrap"] is True


def test_union_takes_the_first_trees_of_each_forest_and_shares_follow_samples():
    x, y = data()
    a = forest.fit_forest(x, y, n_estimators=3, max_depth=2, random_state=0)
    b = forest.fit_forest(x, y, n_estimators=2, max_depth=2, random_state=1)
    union = forest.union_of_trees([a, b], counts=[1, 2])
    assert [t is s for t, s in zip(union, [a[0], *b], strict=True)] == [True] * 3
    assert len(forest.union_of_trees([a, b])) == 5
    assert forest.shares(100, [1, 3]) == [25, 75]
    assert forest.shares(10, [1, 1, 1]) == [4, 3, 3]
    assert forest.shares(3, [1, 1000, 1000]) == [1, 2, 1]  # a small sender still gets one
    with pytest.raises(ValueError):
        forest.shares(10, [0, 0])


def a_tree():
    """Root splits on feature 1 at 0.5; its right child splits on feature 0 at -1."""
    return {
        "children_left": np.array([1, -1, 3, -1, -1], dtype=np.int32),
        "children_right": np.array([2, -1, 4, -1, -1], dtype=np.int32),
        "feature": np.array([1, -2, 0, -2, -2], dtype=np.int32),
        "n_node_samples": np.array([10, 4, 6, 2, 4], dtype=np.int32),
        "threshold": np.array([0.5, -2, -1.0, -2, -2]),
        "value": np.array([0.0, 1.0, 0.0, 2.0, 3.0]),
    }


def test_a_hand_made_tree_descends_as_drawn():
    x = np.array([[0.0, 0.0], [-5.0, 1.0], [5.0, 1.0]])
    np.testing.assert_array_equal(forest.predict_forest([a_tree()], x), [1.0, 2.0, 3.0])


def broken(**changes):
    tree = a_tree()
    for field, values in changes.items():
        tree[field] = np.asarray(values, dtype=tree[field].dtype)
    return tree


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (broken(children_left=[1, -1, 9, -1, -1]), "out of range or before its parent"),
        (broken(children_left=[1, -1, 0, -1, -1]), "out of range or before its parent"),  # loop
        (broken(children_left=[1, -1, 2, -1, -1]), "out of range or before its parent"),  # self
        (broken(children_right=[2, -1, 1, -1, -1]), "out of range or before its parent"),
        (broken(children_left=[1, -1, 4, -1, -1]), "exactly one parent"),  # shared child
        (broken(children_right=[2, 3, 4, -1, -1]), "only one child"),
        (broken(feature=[1, -2, 5, -2, -2]), "outside"),
        (broken(feature=[-3, -2, 0, -2, -2]), "outside"),
        (broken(threshold=[np.nan, -2, -1, -2, -2]), "NaN or infinite"),
        (broken(value=[0, np.inf, 0, 2, 3]), "NaN or infinite"),
        (broken(n_node_samples=[10, 4, 6, 2, 5]), "add up"),
        (broken(n_node_samples=[0, 0, 0, 0, 0]), "positive"),
        ({**a_tree(), "value": np.zeros(4)}, "shape"),
        ({**a_tree(), "feature": np.zeros(5, dtype=np.int64)}, "int32"),
        ({**a_tree(), "threshold": np.zeros(5, dtype=np.float32)}, "float64"),
        ({**a_tree(), "value": np.zeros((5, 1))}, "shape"),
        ({f: a[:0] for f, a in a_tree().items()}, "no nodes"),
    ],
)
def test_malformed_trees_are_refused_before_use(tree, message):
    with pytest.raises(UpdateError, match=message):
        forest.forest_from_arrays(forest.forest_to_arrays([a_tree(), tree]), 2)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (lambda arrays: {k: v for k, v in arrays.items() if k != "tree.1.value"}, "whole"),
        (lambda arrays: {k.replace("tree.1", "tree.2"): v for k, v in arrays.items()}, "missing"),
        (lambda arrays: {**arrays, "extra": np.zeros(1)}, "whole"),
        (lambda arrays: {}, "whole"),
    ],
)
def test_forests_must_name_whole_trees_numbered_from_zero(names, message):
    arrays = forest.forest_to_arrays([a_tree(), a_tree()])
    with pytest.raises(UpdateError, match=message):
        forest.forest_from_arrays(names(arrays), 2)


index_arrays = st.lists(st.integers(-3, 8), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(index_arrays, index_arrays, index_arrays, st.integers(1, 4))
def test_random_arrays_either_fail_the_check_or_descend_to_a_leaf(left, right, feature, n_features):
    nodes = len(left)
    tree = {
        "children_left": np.resize(np.array(left, dtype=np.int32), nodes),
        "children_right": np.resize(np.array(right, dtype=np.int32), nodes),
        "feature": np.resize(np.array(feature, dtype=np.int32), nodes),
        "n_node_samples": np.ones(nodes, dtype=np.int32),
        "threshold": np.zeros(nodes),
        "value": np.arange(nodes, dtype=np.float64),
    }
    try:
        trees = forest.forest_from_arrays(forest.forest_to_arrays([tree]), n_features)
    except UpdateError:
        return
    x = np.random.default_rng(0).normal(size=(20, n_features))
    assert np.isfinite(forest.predict_forest(trees, x)).all()


def test_the_union_keeps_each_share_on_arrival_and_drops_the_rest():
    x, y = data()
    strategy = EnsembleUnion({"model": "rf"}, forest.TREES, forest_quotas(6, "proportional"))
    strategy.prepare(None, {"hubei": 100, "fujian": 200})
    plan = strategy.configure_fit(1, None, ["hubei", "fujian", "beijing"])
    assert [i.province for i in plan] == ["fujian", "hubei"]  # beijing sent no statistics
    assert len({i.config["random_state"] for i in plan}) == 2
    sent = {}
    for province, seed in (("hubei", 0), ("fujian", 1)):
        trees = forest.fit_forest(x, y, n_estimators=5, max_depth=3, random_state=seed)
        sent[province] = trees
        arrays = forest.forest_to_arrays(trees)
        strategy.check_update(arrays, N_FEATURES)
        kept = strategy.accept_fit(1, ClientResult(province, 1, {}, arrays))
        assert kept.arrays == {}
    results = [ClientResult(p, 1, {}) for p in ("hubei", "fujian")]
    merged = forest.forest_from_arrays(strategy.aggregate_fit(1, results, [], None), N_FEATURES)
    expected = [*sent["fujian"][:4], *sent["hubei"][:2]]  # 6 trees, 2:1, in province order
    assert len(merged) == len(expected)
    for tree, original in zip(merged, expected, strict=True):
        for field in forest.TREES.fields:
            np.testing.assert_array_equal(tree[field], original[field])
    assert strategy.round_report(1) == {"members": {"fujian": 4, "hubei": 2}}


@pytest.mark.parametrize("grow", ["all", "share"])
def test_with_grow_share_each_province_grows_only_the_trees_the_global_forest_keeps(grow):
    strategy = build_strategy("rf", {"rf_grow": grow, "rf_global_trees": 10})
    strategy.prepare(None, {"hubei": 100, "fujian": 300, "beijing": 600})
    plan = {
        i.province: i.config["rf_n_estimators"]
        for i in strategy.configure_fit(1, None, ["hubei", "fujian", "beijing"])
    }
    if grow == "all":
        assert plan == {"beijing": 100, "fujian": 100, "hubei": 100}  # Table 1 everywhere
    else:
        assert plan == {"beijing": 6, "fujian": 3, "hubei": 1}


def node_rows(tree, x32):
    """The rows that reach each node, descending from the root."""
    left, right = tree["children_left"], tree["children_right"]
    rows = {0: np.arange(len(x32))}
    for node in range(len(left)):
        if left[node] != forest.LEAF:
            goes_left = x32[rows[node], tree["feature"][node]] <= tree["threshold"][node]
            rows[left[node]] = rows[node][goes_left]
            rows[right[node]] = rows[node][~goes_left]
    return rows


def splits(tree):
    return [n for n in range(len(tree["children_left"])) if tree["children_left"][n] != forest.LEAF]


def straddled(tree, x32):
    """Per split node: its threshold, and the midpoint of the two training values it falls
    between (the largest going left, the smallest going right)."""
    rows = node_rows(tree, x32)
    for node in splits(tree):
        column = x32[:, tree["feature"][node]].astype(np.float64)
        low = column[rows[tree["children_left"][node]]].max()
        high = column[rows[tree["children_right"][node]]].min()
        yield tree["threshold"][node], low / 2.0 + high / 2.0


def test_binned_trees_split_at_grid_edges_never_at_a_midpoint_of_training_values():
    x, y = data(rows=1500)
    x32 = x.astype(np.float32)
    # Full depth, as Table 1, without the bootstrap so that every row is in every tree.
    params = {"n_estimators": 2, "random_state": 0, "bootstrap": False}
    # Exact trees: every threshold is the midpoint of the two training values beside it, so
    # it gives both rows' values away.
    exact = forest.fit_forest(x, y, **params)
    assert all(t == mid for tree in exact for t, mid in straddled(tree, x32))
    # Binned: every threshold is an edge of the grid fixed in advance, and none that midpoint.
    edges = set(forest.grid(32).tolist())
    binned = [
        (t, mid)
        for tree in forest.fit_forest(x, y, bins_per_decade=32, **params)
        for t, mid in straddled(tree, x32)
    ]
    assert len(binned) > 100
    assert all(t in edges and t != mid for t, mid in binned)


@pytest.mark.parametrize("min_leaf", [1, 5, 20])
def test_binned_trees_send_rows_where_their_bins_did_and_leaves_hold_min_leaf_rows(min_leaf):
    x, y = data(rows=2000)
    params = {"n_estimators": 3, "random_state": 0, "min_samples_leaf": min_leaf}
    trees = forest.fit_forest(x, y, bins_per_decade=32, **params)
    edges = forest.grid(32)
    bins = forest.bin_of(x, edges).astype(np.float32)
    grown = RandomForestRegressor(**{**forest.TABLE_1, **params, "n_jobs": 1}).fit(bins, y)
    x32 = x.astype(np.float32)
    for tree, estimator in zip(trees, grown.estimators_, strict=True):
        # The snapped tree sends every row, training or new, to the leaf its bins reach.
        np.testing.assert_array_equal(forest.leaves(tree, x32), estimator.apply(bins))
        leaf = tree["children_left"] == forest.LEAF
        assert (tree["n_node_samples"][leaf] >= min_leaf).all()
        # Counted from the rows themselves: a leaf holds at least min_leaf distinct rows.
        held = np.bincount(forest.leaves(tree, x32), minlength=len(leaf))[leaf]
        assert (held >= min_leaf).all()
    if min_leaf == 1:  # Table 1's leaves: some hold a single row, its target as their value
        assert any(
            (t["n_node_samples"][t["children_left"] == forest.LEAF] == 1).any() for t in trees
        )
