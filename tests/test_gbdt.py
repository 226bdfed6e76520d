"""Histogram trees in one process: summed histograms grow the tree a union of the rows grows."""

import numpy as np
import pytest

from client import histograms
from client.groups import TaskGroups
from common.models import forest, histgrow, histtree
from common.models.checks import UpdateError
from common.models.compiled import _built, _numba, compiled
from common.models.histgrow import (
    ROOT,
    Growing,
    Lost,
    Query,
    TreeSettings,
    TreeStep,
    add_up,
    answer_shapes,
    check_answer,
    check_compact,
    compact,
    expand,
    grow,
    sketch_query,
)
from common.models.histparty import Party, fit_parties, fit_union
from common.tensors import Payload, receive
from server.cli import parse_args
from server.strategies.trees import InOrder
from server.strategy import ClientResult

N_FEATURES = 4


def data(rows=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES)) * [1, 10, 100, 1e4]
    # Two copies of one feature: equal gains that rounding must not tell apart.
    x[:, 3] = x[:, 2] * 100
    y = np.sin(x[:, 0]) + x[:, 1] / 10 + (x[:, 2] > 50) + rng.normal(scale=0.1, size=rows)
    return x, y


def partitions(x, y, sizes=(0.5, 0.3, 0.15, 0.05)):
    cuts = np.cumsum(np.round(np.array(sizes) * len(y)).astype(int))[:-1]
    return list(zip(np.split(x, cuts), np.split(y, cuts), strict=True))


def federated(x, y, settings):
    parties = [Party(px, py, settings) for px, py in partitions(x, y)]
    return fit_parties(parties, x.mean(axis=0), x.std(axis=0), float(np.mean(y)), settings)


def same_trees(a, b):
    return len(a) == len(b) and all(
        all(np.array_equal(s[k], t[k]) for k in ("children_left", "feature", "threshold"))
        for s, t in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(
    "settings",
    [TreeSettings(trees=20, max_depth=4), TreeSettings(trees=15, max_bins=16, reg_lambda=0.0)],
)
def test_federated_by_sums_grows_the_trees_of_the_union(settings):
    x, y = data()
    union, fed = fit_union(x, y, settings), federated(x, y, settings)
    assert [len(e) for e in fed.edges] == [len(e) for e in union.edges]
    assert all(np.array_equal(a, b) for a, b in zip(fed.edges, union.edges, strict=True))
    assert same_trees(fed.trees, union.trees)
    x_new, _ = data(500, seed=1)
    np.testing.assert_allclose(
        histtree.predict(fed.base_score, fed.trees, x_new),
        histtree.predict(union.base_score, union.trees, x_new),
        rtol=0,
        atol=1e-9,
    )


def test_boosting_fits_a_known_function():
    x, y = data(6000)
    grown = fit_union(x, y, TreeSettings(trees=60, max_depth=4))
    x_new, y_new = data(2000, seed=3)
    mse = np.mean((histtree.predict(grown.base_score, grown.trees, x_new) - y_new) ** 2)
    # The noise's variance is 0.01; predicting the mean would cost Var(y) ≈ 1.3.
    assert mse < 0.05


def test_a_forest_of_summed_histograms_averages_its_trees():
    x, y = data(4000)
    settings = TreeSettings(trees=12, max_depth=8, forest=True, reg_lambda=0.0, max_features=0.5)
    grown = federated(x, y, settings)
    assert len(grown.trees) == 12
    # Leaves carry 1/trees: each tree alone predicts base + its share of the residual.
    x_new, y_new = data(2000, seed=4)
    prediction = histtree.predict(grown.base_score, grown.trees, x_new)
    assert np.mean((prediction - y_new) ** 2) < 0.1
    assert not same_trees(grown.trees[:1], grown.trees[1:2])  # bootstraps differ


def test_a_forest_grows_its_trees_together_into_the_trees_grown_one_by_one(monkeypatch):
    x, y = data(4000)
    settings = TreeSettings(trees=10, max_depth=6, forest=True, reg_lambda=0.0, max_features=0.5)
    together = federated(x, y, settings)
    # Every tree of depth 6 is asked 6 levels: the ten trees share them.
    assert histgrow.batch(settings, N_FEATURES) == 10 and together.exchanges == 6
    monkeypatch.setattr(histgrow, "BATCH_BYTES", 1)
    assert histgrow.batch(settings, N_FEATURES) == 1
    alone = federated(x, y, settings)
    assert alone.exchanges == 60
    assert same_trees(together.trees, alone.trees)
    for a, b in zip(together.trees, alone.trees, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_batch_of_trees_keeps_a_level_answer_within_its_bytes():
    many = TreeSettings(trees=5000, max_depth=10, forest=True, reg_lambda=0.0)
    size = histgrow.batch(many, 11)
    widest = 2 ** (many.max_depth - 2) * 11 * many.max_bins * 16
    assert 1 <= size < many.trees and size * widest <= histgrow.BATCH_BYTES
    assert histgrow.batch(TreeSettings(trees=50), 11) == 1  # boosting: one tree at a time


def test_early_stopping_keeps_the_best_ensemble_by_validation_mse():
    x, y = data(3000)
    settings = TreeSettings(trees=200, learning_rate=1.0, max_depth=6, early_stopping=3)
    grown = federated(x, y, settings)
    scores = grown.validation_mse
    best = int(np.argmin(scores))
    assert len(grown.trees) == best + 1
    assert len(scores) - 1 - best <= settings.early_stopping
    assert len(scores) < settings.trees  # stopped early: learning rate 1 overfits fast


def test_bins_split_exactly_as_trees_compare_float32_features():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5000, 2)) * 1e3
    edges = [np.unique(rng.normal(size=30) * 1e3), np.unique(x[:50, 1].astype(np.float32))]
    bins = histtree.bin_rows(x, edges)
    x32 = x.astype(np.float32)
    for f, e in enumerate(edges):
        for b, edge in enumerate(e):
            np.testing.assert_array_equal(bins[f] <= b, x32[:, f] <= edge)


def test_edges_come_from_the_summed_sketch_alone():
    x, y = data()
    mean, std = x.mean(axis=0), x.std(axis=0)
    parts = partitions(x, y)
    summed = sum(histtree.sketch(px, mean, std) for px, _ in parts)
    np.testing.assert_array_equal(summed, histtree.sketch(x, mean, std))
    edges = histtree.edges_from_sketch(summed, mean, std, 32)
    assert all(len(e) <= 31 and (np.diff(e) > 0).all() for e in edges)
    # Roughly equal rows per bin: the edges are the sketch's quantiles.
    counts = np.bincount(histtree.bin_rows(x, edges)[0])
    assert counts.max() < 3 * len(y) / 32


def test_decoded_model_predicts_exactly_as_on_the_server():
    x, y = data()
    grown = fit_union(x, y, TreeSettings(trees=10))
    payload = Payload.encode(grown.arrays())
    arrays = receive(payload.header, payload.chunks(1000), max_bytes=1 << 30)
    base, trees = histtree.unpack_model(arrays, N_FEATURES)
    x_new, _ = data(700, seed=6)
    np.testing.assert_array_equal(
        histtree.predict(base, trees, x_new), histtree.predict(grown.base_score, grown.trees, x_new)
    )


def test_malformed_models_and_questions_are_refused():
    x, y = data(500)
    arrays = fit_union(x, y, TreeSettings(trees=2)).arrays()
    with pytest.raises(UpdateError, match="base_score"):
        histtree.unpack_model({k: v for k, v in arrays.items() if k != "base_score"}, N_FEATURES)
    bad = {**arrays, "tree.0.feature": np.full_like(arrays["tree.0.feature"], 7)}
    with pytest.raises(UpdateError):
        histtree.unpack_model(bad, N_FEATURES)
    wire = Query("level", grow=[Growing(0, np.array([3], dtype=np.int32))]).arrays()
    with pytest.raises(UpdateError, match="asked"):
        Query.from_wire(TreeStep.from_config({"tree_step": "level"}), 0.0, wire, N_FEATURES, 256)
    twice = Query("level", grow=[Growing(0, ROOT), Growing(0, ROOT)]).arrays()
    with pytest.raises(UpdateError, match="grow_index"):
        Query.from_wire(TreeStep.from_config({"tree_step": "level"}), 0.0, twice, N_FEATURES, 256)
    uneven = {**Query("level", grow=[Growing(0, ROOT)]).arrays(), "asked_counts": ROOT + 2}
    with pytest.raises(UpdateError, match="asked_counts"):
        Query.from_wire(TreeStep.from_config({"tree_step": "level"}), 0.0, uneven, N_FEATURES, 256)
    with pytest.raises(UpdateError, match="tree step"):
        Query.from_wire(
            TreeStep.from_config({"tree_step": "rows, please"}), 0.0, {}, N_FEATURES, 256
        )
    question = Query("level", grow=[Growing(0, ROOT)])
    with pytest.raises(UpdateError):
        check_answer({"grad": np.zeros((1, N_FEATURES, 8))}, question, N_FEATURES, 8)


@pytest.mark.parametrize(
    "change", [{"trees": 0}, {"min_child_weight": 0.5}, {"max_bins": 1}, {"subsample": 0}]
)
def test_bad_settings_are_refused_with_the_reason(change):
    with pytest.raises(ValueError, match="must"):
        TreeSettings(**change)


@pytest.mark.parametrize("model", ["gbdt", "rf-hist"])
def test_histogram_trees_take_secagg_and_local_dp_and_refuse_other_privacy_modes(model, capsys):
    for mode in ("secagg", "dp-local"):
        assert parse_args(["--model", model, "--privacy", mode]).privacy.privacy == mode
    for mode in ("dp-central", "he"):
        with pytest.raises(SystemExit):
            parse_args(["--model", model, "--privacy", mode, "--dp-clip", "1"])
        assert "histogram trees take --privacy secagg or dp-local" in capsys.readouterr().err


def test_rows_descend_level_by_level_to_the_leaves_a_whole_descent_finds():
    x, y = data()
    party = Party(x, y, TreeSettings(trees=3, max_depth=5))
    checked = []

    def ask(query):
        answer = party.answer(query)
        for asked in query.grow:
            held = party.growing[asked.index]
            assert np.array_equal(held.node, histtree.leaves(held.tree, party.x32))
            checked.append(held.nodes)
        return answer

    sketch = ask(sketch_query(x.mean(axis=0), x.std(axis=0)))["sketch"]
    grow(ask, sketch, x.mean(axis=0), x.std(axis=0), float(np.mean(y)), party.settings)
    # Every level asked of deep trees (the deepest leaves come from their parents' sums).
    assert len(checked) == 3 * 5 and max(checked) == 31
    # A tree that changes a split already made is not a level grown: descended from the root.
    last = party.growing[2]
    moved = {**last.tree, "threshold": last.tree["threshold"] + 1.0}
    node = histtree.descend(last.tree, moved, last.node, party.x32)
    assert np.array_equal(node, histtree.leaves(moved, party.x32))


def test_a_party_grows_a_fresh_ensemble_each_round():
    x, y = data()
    settings = TreeSettings(trees=4, max_depth=3)
    parties = [Party(px, py, settings) for px, py in partitions(x, y)]
    mean, std, base = x.mean(axis=0), x.std(axis=0), float(np.mean(y))
    first = fit_parties(parties, mean, std, base, settings)
    # The same parties, a second round (its sketch first): the same ensemble again, not refused
    # as out of step with the trees the first round added.
    again = fit_parties(parties, mean, std, base, settings)
    assert same_trees(first.trees, again.trees)


def test_a_compact_answer_is_the_dense_one_and_a_malformed_one_is_refused():
    x, y = data()
    party = Party(x, y, TreeSettings(trees=1, max_depth=4, max_bins=32))
    party.answer(sketch_query(x.mean(axis=0), x.std(axis=0)))
    edges = [np.quantile(x[:, f], np.linspace(0.1, 0.9, 9)) for f in range(N_FEATURES)]
    question = Query("level", edges=edges, base_score=0.0, grow=[Growing(0, ROOT)])
    dense = party.answer(question)
    small = compact(dense)
    shapes = answer_shapes(question, N_FEATURES, 32)
    check_compact(small, shapes)
    assert len(small["at"]) < dense["grad"].size / 2  # 10 bins of 32 used per feature
    assert all(np.array_equal(expand(small, shapes)[k], dense[k]) for k in dense)
    bad = [
        {**small, "at": small["at"][::-1].copy()},
        {**small, "at": small["at"].astype(np.int64)},
        {**small, "at": small["at"] + np.int32(10_000)},
        {**small, "at": small["at"] - np.int32(1)},
        {**small, "grad": small["grad"][:-1]},
        {**small, "hess": np.full_like(small["hess"], np.nan)},
    ]
    for arrays in bad:
        with pytest.raises(UpdateError):
            check_compact(arrays, shapes)


def test_compact_and_dense_answers_add_up_to_their_dense_sum_in_order_to_the_last_bit():
    rng = np.random.default_rng(9)
    shape = (3, N_FEATURES, 16)
    shapes = {"grad": shape, "hess": shape, "val_sse": (), "val_rows": ()}
    answers = []
    for _ in range(5):
        keep = rng.random(shape) < 0.3
        grad = np.where(keep, rng.normal(size=shape) * 10.0 ** rng.integers(-8, 8, shape), 0.0)
        answers.append(
            {"grad": grad, "hess": keep * 1.0, "val_sse": np.asarray(rng.random()), "val_rows": 7}
        )
    expected = {
        k: answers[0][k] + answers[1][k] + answers[2][k] + answers[3][k] + answers[4][k]
        for k in shapes
    }
    mixed = [compact(a) if i % 2 else a for i, a in enumerate(answers)]
    total = add_up(mixed, shapes)
    assert all(np.array_equal(total[k], expected[k]) for k in shapes)
    assert total["grad"].shape == shape


def test_answers_added_as_they_arrive_make_the_sum_in_province_order_to_the_last_bit():
    rng = np.random.default_rng(10)
    shape = (3, N_FEATURES, 16)
    shapes = {"grad": shape, "hess": shape, "val_sse": (), "val_rows": ()}
    provinces = [f"p{i}" for i in range(6)]
    answers = {}
    for i, province in enumerate(provinces):
        keep = rng.random(shape) < 0.3
        grad = np.where(keep, rng.normal(size=shape) * 10.0 ** rng.integers(-8, 8, shape), 0.0)
        dense = {
            "grad": grad,
            "hess": keep * 1.0,
            "val_sse": np.asarray(rng.random()),
            "val_rows": 7,
        }
        answers[province] = compact(dense) if i % 2 else dense
    expected = add_up([answers[p] for p in provinces], shapes)
    running = InOrder(shapes, provinces)
    results = {p: ClientResult(p, 1, {}, a) for p, a in answers.items()}
    *first, last = rng.permutation(provinces)
    for province in first:
        running.keep(results[province])
    assert running.total(provinces, shapes) is None  # one still out
    running.keep(results[last])
    assert running.total(provinces[1:], shapes) is None  # a sum of other answers
    total = running.total(provinces, shapes)
    assert all(np.array_equal(total[k], expected[k]) for k in shapes)
    assert total["grad"].shape == shape


@pytest.mark.parametrize("weighted", [True, False])
def test_compiled_histograms_are_the_per_feature_bincounts_to_the_last_bit(weighted):
    rng = np.random.default_rng(4)
    features, rows, slots, width = 3, 5000, 4, 32
    bins = rng.integers(0, width, size=(features, rows)).astype(np.uint16)
    # Rows listed out of order, some twice (a row of several trees), some not at all.
    listed = rng.choice(rows, size=6000)
    slot = rng.integers(0, slots, size=len(listed))
    grad = rng.normal(size=len(listed)) * 10.0 ** rng.integers(-6, 6, len(listed))
    hess = rng.poisson(1.0, size=len(listed)).astype(float) if weighted else None
    sums = histtree.histograms(bins, listed, slot, grad, hess, slots, width)
    for f in range(features):
        at = slot * width + bins[f, listed]
        for name, weights in (("grad", grad), ("hess", hess)):
            expected = np.bincount(at, weights=weights, minlength=slots * width)
            assert np.array_equal(sums[name][:, f, :].ravel(), expected)


def vectorised_splits(grad, hess, rule, allowed, edge_counts):
    """The split choice written as whole-array numpy: the compiled scoring's oracle."""
    nodes, _, width = grad.shape
    g_total, h_total = grad[:, 0, :].sum(axis=1), hess[:, 0, :].sum(axis=1)
    gl, hl = np.cumsum(grad[..., :-1], axis=2), np.cumsum(hess[..., :-1], axis=2)
    gr, hr = g_total[:, None, None] - gl, h_total[:, None, None] - hl
    valid = (hl >= rule.min_child_weight) & (hr >= rule.min_child_weight) & allowed[..., None]
    valid &= np.arange(width - 1) < np.asarray(edge_counts)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # empty children: not valid
        gain = np.square(gl) / (hl + rule.reg_lambda) + np.square(gr) / (hr + rule.reg_lambda)
    gain = np.where(valid, gain - rule.score(g_total, h_total)[:, None, None], -np.inf)
    gain = gain.reshape(nodes, -1)
    top = gain.max(axis=1, keepdims=True)
    best = (gain >= top - histtree.TIE * np.abs(top)).argmax(axis=1)
    at = np.arange(nodes)
    feature, b = np.divmod(best, width - 1)
    left = (gl.reshape(nodes, -1)[at, best], hl.reshape(nodes, -1)[at, best])
    return feature, b, gain[at, best], *left


@pytest.mark.parametrize("reg_lambda,min_child_weight", [(1.0, 1.0), (0.0, 40.0)])
def test_compiled_split_choice_is_the_vectorised_one_to_the_last_bit(reg_lambda, min_child_weight):
    rng = np.random.default_rng(11)
    nodes, features, width = 40, N_FEATURES, 32
    hess = rng.poisson(3.0, size=(nodes, features, width)).astype(float)
    grad = rng.normal(size=hess.shape) * hess * 10.0 ** rng.integers(-3, 3, (nodes, 1, 1))
    # One feature a copy of another (equal gains: the first wins); one node too small to split.
    grad[:, 3], hess[:, 3] = grad[:, 2], hess[:, 2]
    hess[-1], grad[-1] = 0.0, 0.0
    hess[-1, :, 0] = 1.0
    allowed = rng.random((nodes, features)) < 0.8
    edge_counts = np.array([31, 20, 5, 5])
    rule = histtree.Rule(reg_lambda, min_child_weight, 0.3)
    splits = histtree.best_splits(grad, hess, rule, allowed, edge_counts)
    expected = vectorised_splits(grad, hess, rule, allowed, edge_counts)
    got = (splits.feature, splits.bin, splits.gain, splits.left_grad, splits.left_hess)
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, b)
    assert np.isneginf(splits.gain[-1])
    assert not ((splits.feature == 3) & allowed[:, 2]).any()
    assert (splits.gain[:-1] > 0).any()


def test_compiled_children_are_the_masked_child_and_its_parent_minus_it_to_the_last_bit():
    rng = np.random.default_rng(12)
    parents, splits, width = 5, 4, 16
    scale = 10.0 ** rng.integers(-6, 6, (parents, 1, 1))
    grad = rng.normal(size=(parents, N_FEATURES, width)) * scale
    hess = rng.poisson(4.0, size=grad.shape).astype(float)
    child_grad, child_hess = grad[:splits] * rng.random(), np.floor(hess[:splits] / 2)
    # Noise in bins no feature has (local DP): zeroed in the child, dropped from the sibling.
    child_grad[:, :, -3:] = rng.normal(size=(splits, N_FEATURES, 3))
    parent = np.array([4, 0, 2, 3])
    small_left = np.array([True, False, False, True])
    used = histtree.used_bins([np.arange(width - 4)] * N_FEATURES, width)
    got = histtree.next_level(grad, hess, child_grad, child_hess, parent, small_left, used)
    for i, (p, left) in enumerate(zip(parent, small_left, strict=True)):
        for out, mine, whole in zip(got, (child_grad, child_hess), (grad, hess), strict=True):
            child = mine[i] * used
            small, sibling = (out[2 * i], out[2 * i + 1])[:: 1 if left else -1]
            assert np.array_equal(small, child)
            assert np.array_equal(sibling, whole[p] - child)


def test_the_compiled_kernels_load_in_the_background_for_a_run_of_trees_only():
    if histtree._warming is None:  # no earlier test of this process started the load
        histograms.warm_up(TaskGroups.parse({"model": "lr"}))
        histograms.warm_up(TaskGroups.parse({}))
        assert histtree._warming is None
    histograms.warm_up(TaskGroups.parse({"model": "gbdt"}))
    histtree._warming.join()
    # The types the questions use are loaded: no compilation waits for the first question.
    kernels = (histtree._add_rows, histtree._score_nodes, histtree._fill_children, forest._descend)
    if _built() is None:
        assert all(compiled(k).signatures for k in kernels)
    else:  # the built module's kernels take the warm-up's types: numba compiles none of them
        _numba.cache_clear()
        histtree.load_kernels()
        assert _numba.cache_info().currsize == 0


def depth_of(tree):
    """The depth of a tree in the forest's arrays (a lone root: 0)."""
    depth = {0: 0}
    children = zip(tree["children_left"], tree["children_right"], strict=True)
    for node, (left, right) in enumerate(children):
        for child in (left, right):
            if child >= 0:
                depth[int(child)] = depth[node] + 1
    return max(depth.values())


@pytest.mark.parametrize("depth", [0, 2])
def test_a_party_leaving_mid_tree_leaves_the_rest_to_grow_on_without_asking_a_sum_again(depth):
    """The question out when the last party left is lost: a tree's root is asked again of the
    rest (nothing of it was summed), a deeper level ends its tree there, its last children
    leaves from the sums already held, and the rest grow the trees after it."""
    x, y = data()
    settings = TreeSettings(trees=4, max_depth=4)
    parties = [Party(px, py, settings) for px, py in partitions(x, y)]
    asked: list[tuple[int, int, int]] = []  # (tree, depth, parties) of each sum taken
    still_in = list(parties)

    def ask(query):
        if query.step == "level" and (query.tree, query.depth) == (1, depth) and len(still_in) == 4:
            for party in still_in:  # everyone gets the question; the last never answers
                party.answer(query)
            still_in.pop()
            raise Lost("the last party left")
        answers = [p.answer(query) for p in still_in]
        asked.append((query.tree, query.depth, len(still_in)))
        return {name: sum(a[name] for a in answers) for name in answers[0]}

    sketch = ask(sketch_query(x.mean(axis=0), x.std(axis=0)))["sketch"]
    grown = grow(ask, sketch, x.mean(axis=0), x.std(axis=0), float(np.mean(y)), settings)
    assert len(grown.trees) == settings.trees
    assert grown.cut == ([] if depth == 0 else [(1, depth)])
    assert depth_of(grown.trees[1]) == (depth if depth else settings.max_depth)
    # No question summed over all four was asked again of the three.
    by_question = {}
    for tree, level, count in asked:
        by_question.setdefault((tree, level), set()).add(count)
    assert all(len(counts) == 1 for counts in by_question.values()), by_question
    assert all(c == 3 for (tree, _), counts in by_question.items() if tree > 1 for c in counts)
    # Each remaining party counted every finished tree, the shortened one included, as the
    # model predicts them.
    base = float(np.mean(y))
    for party in still_in:
        expected = histtree.predict(base, grown.trees[:-1], party.x)
        assert np.array_equal(party.margin, expected)
