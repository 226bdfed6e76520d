"""The end-of-run analysis: Shapley and leave-one-out math, the aggregation of what provinces
report, the checks on it, and a province's own part (candidates, importance, fine-tuning)."""

import functools
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from baselines.report import Comparison, analysis_section
from client.analysis import directions, fine_tune
from client.groups import TaskGroups
from client.local import LocalWork
from client.trainers import trainer_for
from common import analysis as shared
from common import preprocess
from common.data import synthesize_province
from common.models.checks import UpdateError
from common.provinces import PROVINCES
from common.registry import MODELS
from common.settings import TaskContext
from common.threshold import PublicKey
from common.vectors import flatten
from proto.fedstock.v1 import federation_pb2 as pb
from server import contributions
from server.analysis import (
    UNREPLAYED,
    Analysis,
    AnalysisSettings,
    FinalFit,
    accept,
    check_supported,
    importance,
    personalisation,
)
from server.config import AnalysisRequest, ConfigError
from server.models import SGD_TRAINING, build_strategy, defaults
from server.privacy.he import HEFedAvg
from server.strategies.federated import FedAdam, Federated
from server.strategies.robust import combiner
from server.strategy import ClientResult, Evaluation, Failure
from server.summary import format_analysis

PLAYERS = ("a", "b", "c", "d")


def game(players=PLAYERS):
    """A game with interactions, so that no two of its values follow from the others."""
    weight = dict(zip(players, [3.0, 1.0, 0.5, 2.0], strict=True))
    value = {}
    for k in range(len(players) + 1):
        for members in itertools.combinations(players, k):
            coalition = frozenset(members)
            synergy = 4.0 if {"a", "b"} <= coalition else 0.0
            value[coalition] = sum(weight[p] for p in coalition) ** 1.5 + synergy - 0.7 * (k >= 3)
    return value


def exact_shapley(players, value):
    """The textbook formula: |S|!(n−|S|−1)!/n! weights over every coalition without i."""
    n = len(players)
    phi = {}
    for player in players:
        others = [p for p in players if p != player]
        phi[player] = sum(
            math.factorial(k)
            * math.factorial(n - k - 1)
            / math.factorial(n)
            * (value[frozenset(s) | {player}] - value[frozenset(s)])
            for k in range(n)
            for s in itertools.combinations(others, k)
        )
    return phi


def test_every_order_gives_the_exact_shapley_values():
    value = game()
    orders = list(itertools.permutations(PLAYERS))
    estimate, _ = contributions.shapley(PLAYERS, [orders], value)
    exact = exact_shapley(PLAYERS, value)
    assert estimate == pytest.approx(exact, abs=1e-12)
    assert sum(exact.values()) == pytest.approx(value[frozenset(PLAYERS)] - value[frozenset()])


def test_the_monte_carlo_estimate_nears_the_exact_values_and_is_efficient():
    value = game()
    exact = exact_shapley(PLAYERS, value)
    few = contributions.random_orders(PLAYERS, 5, seed=1)
    many = contributions.random_orders(PLAYERS, 2000, seed=1)
    for orders in (few, many):
        estimate, errors = contributions.shapley(PLAYERS, orders, value)
        total = value[frozenset(PLAYERS)] - value[frozenset()]
        assert sum(estimate.values()) == pytest.approx(total, abs=1e-9)
    off = {p: abs(estimate[p] - exact[p]) for p in PLAYERS}
    assert max(off.values()) < 0.05 and all(off[p] < 4 * errors[p] for p in PLAYERS)


def test_orders_come_in_rotations_so_each_player_leads_equally_often():
    sets = contributions.random_orders(PLAYERS, 5, seed=3)
    assert [len(s) for s in sets] == [4, 4]  # rounded up to whole rotation sets
    orders = [o for s in sets for o in s]
    assert sorted(o[0] for o in orders) == sorted(PLAYERS * 2)
    assert all(sorted(o) == sorted(PLAYERS) for o in orders)
    assert sets == contributions.random_orders(PLAYERS, 5, seed=3)
    assert sets != contributions.random_orders(PLAYERS, 5, seed=4)


def test_coalitions_cover_leave_one_out_and_every_prefix_once():
    sets = contributions.random_orders(PLAYERS, 8, seed=0)
    needed = contributions.coalitions(PLAYERS, sets)
    assert len(needed) == len(set(needed))
    everyone = frozenset(PLAYERS)
    assert {everyone, frozenset()} | {everyone - {p} for p in PLAYERS} <= set(needed)
    assert all(frozenset(o[:k]) in needed for s in sets for o in s for k in range(len(o) + 1))
    value = game()
    loo = contributions.leave_one_out(PLAYERS, value)
    assert loo["a"] == value[everyone] - value[frozenset("bcd")]


def result(province, n, metrics, arrays=None):
    return ClientResult(province, n, metrics, arrays or {})


def test_importance_is_the_sample_weighted_rise_in_mse_per_feature():
    def metrics(base, rises):
        permuted = {
            shared.permuted_metric(f, r): base + rise[r]
            for f, rise in rises.items()
            for r in (0, 1)
        }
        return {shared.GLOBAL_MSE: base, **permuted}

    results = [
        result("hubei", 100, metrics(1.0, {"close": (5.0, 7.0), "volume": (0.0, 0.2)})),
        result("fujian", 300, metrics(2.0, {"close": (1.0, 3.0), "volume": (0.4, 0.0)})),
    ]
    report = importance(results, ["volume", "close"], 2)
    assert report["base_mse"] == pytest.approx(1.75)
    assert list(report["features"]) == ["close", "volume"]  # ranked, largest rise first
    close = report["features"]["close"]
    assert close["permuted_mse"] == pytest.approx([1.75 + 2.0, 1.75 + 4.0])
    assert close["importance"] == pytest.approx(3.0)
    assert close["std"] == pytest.approx(np.std([2.0, 4.0], ddof=1))
    assert report["features"]["volume"]["importance"] == pytest.approx((0.3 + 0.05) / 2)


def test_personalisation_reports_every_province_and_the_weighted_totals():
    results = [
        result("hubei", 100, {shared.GLOBAL_MSE: 1.0, shared.PERSONAL_MSE: 0.5}),
        result("fujian", 300, {shared.GLOBAL_MSE: 2.0, shared.PERSONAL_MSE: 2.5}),
    ]
    report = personalisation(results, settings(epochs=2), "lr-sgd")
    assert report["per_client"]["hubei"] == {"n_test": 100, "global_mse": 1.0, "personal_mse": 0.5}
    assert report["global_mse"] == pytest.approx(1.75)
    assert report["personal_mse"] == pytest.approx(2.0)
    assert report["method"].startswith("2 epoch(s) of lr-sgd's own mini-batch SGD")


def test_answers_are_checked_before_they_count():
    expected = [shared.GLOBAL_MSE, shared.MEAN_MSE]
    good = {shared.GLOBAL_MSE: 1.0, shared.MEAN_MSE: 2.0, "seconds": 0.1}
    assert accept(result("hubei", 10, good), expected).metrics == good
    sums = shared.score_sums(np.ones((10, 3)), np.arange(10.0))
    assert accept(result("hubei", 10, good, sums), expected, size=3).arrays == sums
    nan_gram = {**sums, shared.GRAM: sums[shared.GRAM] * np.nan}
    bad = [
        (result("hubei", 10, {shared.GLOBAL_MSE: 1.0}), 0, "lacks 1 metrics"),
        (result("hubei", 10, {**good, shared.MEAN_MSE: -1.0}), 0, "non-negative"),
        (result("hubei", 10, {**good, shared.GLOBAL_MSE: math.nan}), 0, "non-negative"),
        (result("hubei", 0, good), 0, "positive number"),
        (result("hubei", 10, good, {"coef": np.zeros(2)}), 0, "no tensors"),
        (result("hubei", 10, good), 3, "carries the tensors"),
        (result("hubei", 10, good, sums), 4, "of shape"),
        (result("hubei", 10, good, {**sums, shared.SQUARE: np.array(-1.0)}), 3, "negative"),
        (result("hubei", 10, good, nan_gram), 3, "finite"),
    ]
    for answer, size, why in bad:
        with pytest.raises(UpdateError, match=why):
            accept(answer, expected, size)


def test_the_test_rows_sums_give_the_squared_error_of_any_model_near_the_global_one():
    rng = np.random.default_rng(0)
    phi, r = rng.normal(size=(50, 4)), rng.normal(size=50)
    sums = shared.score_sums(phi, r)
    for step in (np.zeros(4), rng.normal(size=4)):
        direct = float(np.sum((r - phi @ step) ** 2))
        assert shared.squared_error(sums, step) == pytest.approx(direct, rel=1e-12)


def settings(contributions=True, repeats=2, epochs=1):
    return AnalysisSettings(contributions, 9, repeats, epochs, 0.01, seed=0)


def test_models_that_cannot_be_analysed_are_refused_with_a_reason():
    lr_sgd = build_strategy("lr-sgd")
    check_supported(settings(), build_strategy("lr"))
    check_supported(settings(), Federated(lr_sgd, None, combiner("median")))
    check_supported(settings(), build_strategy("rf"))
    assert all(spec.fine_tuning for spec in MODELS.values())  # every model can be personalised
    refused = [
        (Federated(lr_sgd, None, combiner("krum")), settings(), "use mean or median"),
        (FedAdam(lr_sgd, lr=0.05), settings(), "not --strategy fedadam"),
        (
            HEFedAvg(build_strategy("lr"), PublicKey(2**64, 2, PROVINCES)),
            settings(),
            "no --privacy",
        ),
    ]
    for strategy, wanted, why in refused:
        with pytest.raises(ValueError, match=why):
            check_supported(wanted, strategy)


def test_flags_select_the_analysis():
    request = AnalysisRequest(
        contributions=False,
        shapley_permutations=20,
        importance=True,
        importance_repeats=3,
        personalise=False,
        personalise_epochs=4,
        personalise_pull=0.5,
    )
    assert AnalysisSettings.asked(request, 7) == AnalysisSettings(False, 20, 3, 0, 0.5, 7)
    assert AnalysisSettings.asked(replace(request, importance=False), 7) is None
    with pytest.raises(ConfigError, match="--importance-repeats must be at least 1"):
        replace(request, importance_repeats=0)


# A province's own part, and the server's, with phases answered by LocalWork in this process.

ROWS, SEED = 20_000, 3


@pytest.fixture(scope="module")
def provinces():
    works = {p: LocalWork(synthesize_province(p, ROWS, SEED)) for p in PROVINCES}
    data = {"setting": "next-day", "test_fraction": 0.2, "seed": 0}
    splits = [w.split(TaskGroups.parse(data)) for w in works.values()]
    columns = [*preprocess.NEXT_DAY_FEATURES, preprocess.TARGET]
    stats = preprocess.GlobalStatistics.from_sums(
        columns, [preprocess.statistics(s.x_train, s.y_train) for s in splits]
    )
    return works, {**data, **TaskContext.from_statistics(stats).to_config()}, stats.scaler()


def in_process(works, config, scaler):
    """Each phase's tasks done by the provinces' LocalWork, here, as the client daemon would."""

    def run(server_round, kind, instructions, check):
        results, failures = [], []
        for i in instructions:
            work = works[i.province]
            do = {pb.TASK_KIND_TRAIN: work.train, pb.TASK_KIND_ANALYSE: work.analyse}[kind]
            outcome = do(TaskGroups.parse({**config, **i.config}), scaler, i.parameters)
            answer = ClientResult(i.province, outcome.num_examples, outcome.metrics, outcome.arrays)
            try:
                results.append(check(answer))
            except UpdateError as error:
                failures.append(Failure(i.province, str(error)))
        return results, failures

    return run


FOREST = {"rf_n_estimators": 4, "rf_global_trees": 18, "rf_max_depth": 5}
# Contributions are exact for any number of random features; fewer keep the probes cheap.
SVM = {"svm_features": 40}


def without(strategy, model, final, leaver):
    """The model of every province but `leaver`, built as the server builds a coalition's."""
    spec = MODELS[str(strategy.model_config["model"])]
    if spec.members is None:
        kept = [u for u in final.updates if u.province != leaver]
        return strategy.aggregate_fit(final.server_round, kept, [], final.start)
    members = strategy.round_report(final.server_round)["members"]
    owners = [p for p, count in members.items() for _ in range(count)]
    trees = spec.members.unpack(model, len(preprocess.NEXT_DAY_FEATURES))
    return spec.members.pack([t for t, o in zip(trees, owners, strict=True) if o != leaver])


@pytest.mark.parametrize(
    ("model", "options", "rounds"),
    [("lr-exact", {}, 1), ("lr-sgd", {}, 2), ("rf", FOREST, 1), ("svm", SVM, 1)],
)
def test_the_analysis_over_nine_provinces_in_process(provinces, model, options, rounds):
    works, config, scaler = provinces
    run = in_process(works, config, scaler)
    strategy = build_strategy(model, options)
    samples = {p: len(w.split(TaskGroups.parse(config)).y_train) for p, w in works.items()}
    strategy.prepare(None, samples)
    parameters = None
    for server_round in range(1, rounds + 1):
        start = parameters
        plan = strategy.configure_fit(server_round, parameters, sorted(works))
        keep = functools.partial(strategy.accept_fit, server_round)
        updates, _ = run(server_round, pb.TASK_KIND_TRAIN, plan, keep)
        parameters = strategy.aggregate_fit(server_round, updates, [], start)
    final = FinalFit(rounds, updates, start)
    sections = Analysis(settings()).run(
        run, rounds + 1, strategy, parameters, final, sorted(works), preprocess.NEXT_DAY_FEATURES
    )
    assert sections["analysis"]["failures"] == []
    # The global model scored directly, as federated evaluation would.
    scores = []
    for province, work in works.items():
        outcome = work.evaluate(
            TaskGroups.parse({**config, **strategy.model_config}), scaler, parameters
        )
        scores.append(ClientResult(province, outcome.num_examples, outcome.metrics))
    evaluation = Evaluation.weighted(scores)
    value = sections["contributions"]
    assert value["mse_all"] == pytest.approx(evaluation.mse, rel=1e-9)
    assert value["mse_empty"] > 10 * value["mse_all"]  # the mean price is a poor forecast
    assert sum(value["shapley"].values()) == pytest.approx(value["mse_empty"] - value["mse_all"])
    assert set(value["leave_one_out"]) == set(PROVINCES) and value["permutations"] == 9
    # The server's score of a coalition's model, which never left it, is the MSE the provinces
    # find when they score that model themselves.
    leaver = "hubei"
    rest = without(strategy, parameters, final, leaver)
    direct = Evaluation.weighted(
        ClientResult(p, o.num_examples, o.metrics)
        for p, w in works.items()
        for o in [w.evaluate(TaskGroups.parse({**config, **strategy.model_config}), scaler, rest)]
    )
    assert value["mse_all"] + value["leave_one_out"][leaver] == pytest.approx(direct.mse, rel=1e-9)
    ranked = list(sections["importance"]["features"])
    assert sections["importance"]["base_mse"] == pytest.approx(evaluation.mse, rel=1e-9)
    assert ranked.index("volume") > min(ranked.index("close"), ranked.index("price"))
    personal = sections["personalisation"]["per_client"]
    assert set(personal) == set(PROVINCES)
    for province, score in personal.items():
        assert score["global_mse"] == pytest.approx(evaluation.per_client[province]["mse"])
        assert score["personal_mse"] >= 0


def test_a_province_pulls_a_foreign_model_towards_its_own_rows(provinces):
    works, config, scaler = provinces
    foreign = (
        works["shanghai"].train(TaskGroups.parse({**config, "model": "lr"}), scaler, None).arrays
    )
    own = works["hubei"].train(TaskGroups.parse({**config, "model": "lr"}), scaler, None).arrays
    task = {**config, "model": "lr"}

    def asked(pull):
        ask = shared.AnalysisAsk(analysis_seed=0, personalise_pull=pull, personalise_epochs=1)
        return {**task, **ask.to_config()}

    def scores(pull):
        return works["hubei"].analyse(TaskGroups.parse(asked(pull)), scaler, foreign)

    loose, firm, rigid = (scores(pull).metrics for pull in (0.0, 0.01, 1e9))
    own_mse = works["hubei"].evaluate(TaskGroups.parse(task), scaler, own).metrics["mse"]
    assert own_mse < loose[shared.GLOBAL_MSE]
    # No pull: the province's own least squares; an endless pull: the global weights.
    assert loose[shared.PERSONAL_MSE] == pytest.approx(own_mse, rel=1e-6)
    assert rigid[shared.PERSONAL_MSE] == pytest.approx(rigid[shared.GLOBAL_MSE], rel=1e-6)
    assert firm[shared.PERSONAL_MSE] < firm[shared.GLOBAL_MSE]
    # On the rows it is fitted to, a firm pull lands between the two (on test rows it may even
    # beat the province's own fit, which is fitted to the training rows alone).
    data = works["hubei"].split(TaskGroups.parse(config))
    x = preprocess.scale(data.x_train, *scaler)
    lr = trainer_for("lr")
    fitted = [
        fine_tune(lr, foreign, x, data.y_train, TaskGroups.parse(asked(pull)))
        for pull in (0.0, 0.01, 1e9)
    ]
    own_fit, firm_fit, global_fit = (
        float(np.mean((lr.predict(model, x, TaskGroups.parse(task)) - data.y_train) ** 2))
        for model in fitted
    )
    assert own_fit <= firm_fit <= global_fit and own_fit < global_fit
    with pytest.raises(ValueError, match="unknown model 'gbm'"):
        fine_tune(
            trainer_for("lr"),
            {},
            data.x_train,
            data.y_train,
            TaskGroups.parse({**task, "model": "gbm"}),
        )


@pytest.mark.parametrize("model", ["lr", "lr-sgd", "svm"])
def test_a_provinces_sums_score_another_model_as_the_model_itself_scores(provinces, model):
    works, config, scaler = provinces
    task = {**config, **defaults(), **SGD_TRAINING.to_config(), "model": model, "round": 1}
    first = works["hubei"].train(TaskGroups.parse(task), scaler, None).arrays
    second = works["fujian"].train(TaskGroups.parse(task), scaler, None).arrays
    data = works["hubei"].split(TaskGroups.parse(config))
    x = preprocess.scale(data.x_test, *scaler)
    trainer = trainer_for(model)
    at, phi = directions(trainer, first, x, TaskGroups.parse(task))
    assert at == pytest.approx(trainer.predict(first, x, TaskGroups.parse(task)), rel=1e-12)
    sums = shared.score_sums(phi, data.y_test - at)
    step = flatten(second) - flatten(first)
    direct = float(np.sum((trainer.predict(second, x, TaskGroups.parse(task)) - data.y_test) ** 2))
    assert shared.squared_error(sums, step) == pytest.approx(direct, rel=1e-8)
    if trainer.predict_candidates is not None:  # the fast path predicts as the trainer does
        fast = list(trainer.predict_candidates([first, second], x, TaskGroups.parse(task)))
        for prediction, weights in zip(fast, [first, second], strict=True):
            assert prediction == pytest.approx(
                trainer.predict(weights, x, TaskGroups.parse(task)), rel=1e-9
            )


def test_the_report_shows_each_analysed_federated_run():
    sections = {
        "contributions": {
            "mse_all": 0.2,
            "mse_empty": 170.0,
            "baseline": "the empty coalition predicts the federation's training mean",
            "permutations": 9,
            "leave_one_out": {"hubei": -0.01, "fujian": 0.02},
            "shapley": {"hubei": 84.0, "fujian": 85.8},
            "shapley_std_error": {"hubei": 0.1, "fujian": 0.1},
        },
        "importance": {
            "base_mse": 0.2,
            "repeats": 2,
            "features": {"close": {"importance": 200.0, "std": 1.0}},
        },
    }
    run = {"final": {"mse": 0.2, "train_seconds": 1.0, "per_client": {}}, **sections}
    plain = {"final": {"mse": 0.1, "train_seconds": 1.0, "per_client": {}}}
    lines = analysis_section(Comparison(runs={("federated", "lr"): run, ("spark", "lr"): plain}))
    assert lines[:3] == ["## Contributions, explainability and personalisation", "", "### LR"]
    assert "| hubei | -0.01 | +84 | 0.1 | -0.9 |" in lines and "| close | +200 | 1 |" in lines
    assert "personalised" not in "\n".join(lines)
    assert analysis_section(Comparison(runs={("spark", "lr"): plain})) == []


def test_contributions_without_the_final_updates_say_why(provinces):
    works, config, scaler = provinces
    run = in_process(works, config, scaler)
    strategy = build_strategy("lr")
    plan = strategy.configure_fit(1, None, sorted(works))
    updates, _ = run(1, pb.TASK_KIND_TRAIN, plan, lambda r: r)
    model = strategy.aggregate_fit(1, updates, [], None)
    sections = Analysis(settings(repeats=0, epochs=0)).run(
        run, 2, strategy, model, None, sorted(works), preprocess.NEXT_DAY_FEATURES
    )
    assert sections["contributions"] == {"error": UNREPLAYED}
    assert f"contributions: {UNREPLAYED}" in "\n".join(format_analysis(sections))
