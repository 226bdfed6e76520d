"""Differential privacy: clipping, noise scale, the accountant, and a federation that uses it."""

import math

import numpy as np
import pytest

from client.groups import TaskGroups
from client.local import LocalWork
from client.privacy import PrivacyError, noised_score, privatize
from common import forecast, vectors
from common.data import synthesize_province
from common.launch import LocalFederation
from common.models import linear
from common.noise import SecureRandom
from common.protection import DPScoring
from common.provinces import PROVINCES
from common.settings import DataSettings
from server import privacy
from server.checkpoint import Checkpoint
from server.cli import parse_args
from server.memory import MemoryChannel
from server.models import defaults
from server.privacy.dp import Accountant, DPFedAvg, DPSettings, epsilon, planned_releases
from server.strategy import ClientResult, FedAvg
from server.summary import format_summary
from tests import in_memory
from tests.test_federation import FAST

ROWS, SEED = 20_000, 3


def fedavg():
    return FedAvg({"model": "lr"}, check=linear.check_weights)


def test_clipping_bounds_the_norm_and_never_scales_up():
    big, small = np.array([3.0, 4.0]), np.array([0.3, 0.4])
    assert np.linalg.norm(vectors.clip(big, 1.0)) == pytest.approx(1.0)
    np.testing.assert_allclose(vectors.clip(big, 1.0), [0.6, 0.8])
    np.testing.assert_array_equal(vectors.clip(small, 1.0), small)


def test_vectors_round_trip_in_sorted_name_order():
    arrays = {"intercept": np.array(5.0), "coef": np.array([1.0, 2.0])}
    flat = vectors.flatten(arrays)
    np.testing.assert_array_equal(flat, [1.0, 2.0, 5.0])
    back = vectors.unflatten(flat, arrays)
    assert back["intercept"].shape == () and float(back["intercept"]) == 5.0


def test_local_dp_clips_the_step_from_the_global_model_and_adds_noise_of_sigma_c():
    reference = {"coef": np.full(40_000, 1.0)}
    update = {"coef": np.full(40_000, 3.0)}
    config = {"privacy": "dp-local", "dp_clip": 2.0, "dp_noise_multiplier": 0.0}
    step = privatize(update, reference, TaskGroups.parse(config))["coef"] - 1.0
    assert np.linalg.norm(step) == pytest.approx(2.0)
    config["dp_noise_multiplier"] = 0.5
    noisy = (
        privatize(update, reference, TaskGroups.parse(config), np.random.default_rng(0))["coef"]
        - 1.0
    )
    assert np.std(noisy - step) == pytest.approx(0.5 * 2.0, rel=0.02)
    assert privatize(update, reference, TaskGroups.parse({"privacy": "none"})) is update


def test_local_dp_clips_each_rows_squared_error_and_noises_the_mse_at_the_updates_noise():
    truth, prediction = np.zeros(4), np.array([0.5, 1.0, 3.0, -10.0])  # squared: .25, 1, 9, 100
    assert forecast.clipped_mse(prediction, truth, 4.0) == {"mse": (0.25 + 1 + 4 + 4) / 4}
    config = {"privacy": "dp-local", **DPScoring(4.0, 0.0).to_config()}
    exact = {"mse": 2.3125, "seconds": 0.5}
    assert noised_score(exact, TaskGroups.parse(config)) == exact
    # Noise N(0, (σ·B/2)²): the updates' multiplier in units of a score's sensitivity B.
    config["dp_noise_multiplier"] = 0.6
    draws = np.random.default_rng(1).normal(0.0, 0.6 * 4.0 / 2, 50)
    rng = np.random.default_rng(1)
    released = [noised_score(exact, TaskGroups.parse(config), rng)["mse"] for _ in draws]
    np.testing.assert_allclose(released, np.clip(2.3125 + draws, 0.0, 4.0))
    assert min(released) >= 0.0 and max(released) <= 4.0  # clamped: post-processing
    with pytest.raises(PrivacyError, match="dp_score_clip"):
        noised_score(exact, TaskGroups.parse({"privacy": "dp-local", "dp_noise_multiplier": 1.0}))


def test_central_dp_averages_clipped_steps_over_the_clients_asked():
    settings = DPSettings("dp-central", clip=1.0, noise_multiplier=0.0, delta=1e-5)
    strategy = DPFedAvg(fedavg(), settings)
    current = {"coef": np.zeros(2), "intercept": np.array(0.0)}
    strategy.configure_fit(1, current, ["a", "b", "c", "d"])
    results = [
        ClientResult("a", 10, {}, {"coef": np.array([3.0, 0.0]), "intercept": np.array(4.0)}),
        ClientResult("b", 99, {}, {"coef": np.array([0.0, 0.5]), "intercept": np.array(0.0)}),
    ]
    merged = strategy.aggregate_fit(1, results, [], current)
    # a's step (3, 0, 4) is clipped to (0.6, 0, 0.8); b's is kept; both weigh the same; ÷ 4.
    np.testing.assert_allclose(merged["coef"], [0.15, 0.125])
    assert float(merged["intercept"]) == pytest.approx(0.2)


def test_central_dp_noise_on_the_average_is_sigma_c_over_the_clients():
    settings = DPSettings("dp-central", clip=2.0, noise_multiplier=1.5, delta=1e-5)
    strategy = DPFedAvg(fedavg(), settings, np.random.default_rng(1))
    strategy.configure_fit(1, None, ["a", "b", "c"])
    zero = {"coef": np.zeros(30_000), "intercept": np.array(0.0)}
    merged = strategy.aggregate_fit(1, [ClientResult("a", 1, {}, zero)], [], None)
    assert np.std(merged["coef"]) == pytest.approx(1.5 * 2.0 / 3, rel=0.02)


def test_epsilon_falls_with_noise_and_grows_with_rounds():
    assert epsilon(0.5, 3, 1e-5) > epsilon(1.0, 3, 1e-5) > epsilon(2.0, 3, 1e-5)
    assert epsilon(1.0, 1, 1e-5) < epsilon(1.0, 10, 1e-5)
    for mode in ("dp-central", "dp-local"):
        settings = DPSettings.for_epsilon(mode, clip=1.0, target=3.0, delta=1e-5, releases=4)
        assert settings.epsilon(4) == pytest.approx(3.0, rel=1e-3)
    # Replacing a client's data moves its own release twice as far: local DP needs 2σ.
    central = DPSettings.for_epsilon("dp-central", 1.0, 3.0, 1e-5, 4).noise_multiplier
    local = DPSettings.for_epsilon("dp-local", 1.0, 3.0, 1e-5, 4).noise_multiplier
    assert local == pytest.approx(2 * central)


def test_privacy_applies_only_to_averaged_weight_vectors(capsys):
    asked = parse_args(["--privacy", "dp-central", "--dp-clip", "1"]).privacy
    assert isinstance(privacy.wrap(fedavg(), asked, 3), DPFedAvg)
    with pytest.raises(SystemExit):
        parse_args(["--model", "lr-exact", "--privacy", "dp-central"])
    assert "needs a model whose updates are weight vectors" in capsys.readouterr().err


@pytest.mark.integration
def test_local_dp_federation_reports_epsilon_every_round(tmp_path):
    args = [*FAST, "--privacy", "dp-local", "--dp-epsilon", "3", "--dp-clip", "5"]
    federation = LocalFederation(tmp_path, "lr", 2, ROWS, SEED, server_args=args)
    federation.start()
    codes = federation.wait(timeout=240)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    rounds = federation.results()["rounds"]
    spent = [r["privacy"]["epsilon"] for r in rounds]
    assert spent[0] < spent[1] == pytest.approx(3.0, rel=1e-3)
    assert all(r["privacy"]["delta"] == 1e-5 and math.isfinite(r["mse"]) for r in rounds)


def test_pld_composes_tighter_than_rdp_and_both_calibrate_to_the_target():
    assert epsilon(1.0, 33, 1e-5, "pld") < epsilon(1.0, 33, 1e-5, "rdp")
    for kind in ("rdp", "pld"):
        settings = DPSettings.for_epsilon("dp-central", 1.0, 2.0, 1e-5, 33, kind)
        assert settings.accountant == kind
        assert settings.epsilon(33) == pytest.approx(2.0, rel=1e-2)


def test_cross_validation_grid_points_and_folds_are_releases_too():
    # The statistics once, then every round of every fold and grid point, and the final
    # rounds, each round's noised scores a release beside its noised updates.
    assert planned_releases(rounds=3, folds=5, candidates=2) == 1 + 66
    assert planned_releases(rounds=3, folds=0, candidates=1) == 1 + 6
    # The next-day setting's time split: its rows per year, then per day, two more.
    assert planned_releases(rounds=3, folds=0, candidates=1, time_split=True) == 2 + 1 + 6


def test_the_default_noise_is_not_numpys_generator():
    strategy = DPFedAvg(fedavg(), DPSettings("dp-central", 1.0, 1.0, 1e-5))
    assert isinstance(strategy.rng, SecureRandom)
    draws = []
    for _ in range(2):
        np.random.seed(0)  # a seeded numpy would repeat itself; the OS generator does not
        draws.append(strategy.rng.normal(0.0, 1.0, 1000))
    assert not np.array_equal(draws[0], draws[1])
    big = SecureRandom().normal(0.0, 2.0, (200, 500))
    assert big.shape == (200, 500) and np.std(big) == pytest.approx(2.0, rel=0.02)
    assert abs(np.mean(big)) < 0.05  # 10 standard errors


def run_rounds(strategy, rounds):
    current = {"coef": np.zeros(2), "intercept": np.array(0.0)}
    update = [ClientResult("a", 1, {}, {"coef": np.ones(2), "intercept": np.array(1.0)})]
    for server_round in range(1, rounds + 1):
        strategy.configure_fit(server_round, current, ["a"])
        current = strategy.aggregate_fit(server_round, update, [], current)
        strategy.configure_evaluate(server_round, current, ["a"])
    return strategy.round_report(rounds)["privacy"]


def test_strategies_sharing_an_accountant_count_every_release_and_no_clear_one():
    settings = DPSettings("dp-central", 1.0, 1.0, 1e-5)
    shared = Accountant(settings)
    for _ in range(2):  # two candidates of model selection, say
        run_rounds(DPFedAvg(fedavg(), settings, accountant=shared), 3)
    report = run_rounds(DPFedAvg(fedavg(), settings, accountant=shared), 3)
    assert report["noisy_releases"] == {"noisy sums of updates": 9, "noised scores": 9}
    assert report["epsilon"] == pytest.approx(epsilon(1.0, 18, 1e-5))
    assert report["clear_releases"] == {} and "note" not in report
    assert report["accountant"] == "rdp"


def test_local_dp_counts_a_release_per_round_asked_even_without_answers():
    settings = DPSettings("dp-local", 1.0, 2.0, 1e-5)
    strategy = DPFedAvg(fedavg(), settings)
    strategy.configure_fit(1, None, ["a", "b"])
    assert strategy.aggregate_fit(1, [], [], None) is None
    report = strategy.round_report(1)["privacy"]
    assert report["noisy_releases"] == {"noised updates": 1}
    assert report["epsilon"] == pytest.approx(epsilon(1.0, 1, 1e-5))
    strategy.configure_evaluate(1, {"coef": np.zeros(2)}, ["a", "b"])
    report = strategy.round_report(1)["privacy"]
    assert report["noisy_releases"] == {"noised updates": 1, "noised scores": 1}
    assert report["epsilon"] == pytest.approx(epsilon(1.0, 2, 1e-5))
    assert report["clear_releases"] == {}


def test_under_local_dp_each_province_releases_its_clipped_mse_noised_and_counted(tmp_path):
    """The server's own run in memory: what each province sent of its scores, and the ε."""
    works = {p: in_memory.Scoring(synthesize_province(p, in_memory.ROWS, SEED)) for p in PROVINCES}
    flags = ["--model", "lr", "--rounds", "2", "--privacy", "dp-local", "--dp-epsilon", "3"]
    flags += ["--dp-score-clip", "2"]
    plain = in_memory.run(tmp_path / "plain", "--model", "lr", "--rounds", "2")
    results = in_memory.run(tmp_path / "dp", *flags, over=MemoryChannel(works))
    for province, work in works.items():
        assert len(work.sent) == 2  # one evaluation a round
        for outcome in work.sent:
            assert set(outcome.metrics) == {"mse", "seconds"}  # no MAE, no naive MSEs
            assert 0.0 <= outcome.metrics["mse"] <= 2.0
        released = results["final"]["per_client"][province]
        assert released["mse"] == work.sent[-1].metrics["mse"]
        assert released["mse"] != plain["final"]["per_client"][province]["mse"]
    spent = [r["privacy"] for r in results["rounds"]]
    assert spent[-1]["noisy_releases"] == {
        "noised date counts": 2,  # the time split's rows per year, then per day
        "noised statistics": 1,
        "noised updates": 2,
        "noised scores": 2,
    }
    assert spent[-1]["clear_releases"] == {}
    assert spent[0]["epsilon"] < spent[1]["epsilon"] == pytest.approx(3.0, rel=1e-2)
    assert all(r["train_mse"] is None for r in results["rounds"])
    metrics = results["disclosure"]["metrics"]["server"]
    assert "clipped to B = 2" in metrics and "counted as a release" in metrics


def test_a_resumed_run_goes_on_counting_where_it_stopped(tmp_path):
    settings = DPSettings("dp-central", 1.0, 1.0, 1e-5, "pld")
    before = DPFedAvg(fedavg(), settings)
    spent = run_rounds(before, 4)
    Checkpoint(4, {}, np.zeros(1), np.ones(1), {}, before.state()).save(tmp_path / "c.npz")
    after = DPFedAvg(fedavg(), settings)
    after.restore(Checkpoint.load(tmp_path / "c.npz").strategy_state)
    assert after.round_report(4)["privacy"] == spent
    resumed = run_rounds(after, 1)["noisy_releases"]
    assert resumed == {"noisy sums of updates": 5, "noised scores": 5}


def test_model_selection_releases_are_counted_in_a_whole_run(tmp_path):
    """The server's own run (in memory): 2 grid points × 3 folds × 2 rounds, then 2 rounds."""
    flags = ["--model", "svm", "--rounds", "2", "--min-clients", "9"]
    # Releases are counted per round whatever the model's size: a small feature map keeps the
    # provinces' Gram factorisations (the run's costliest step) cheap.
    flags += ["--svm-features", "50"]
    flags += ["--privacy", "dp-central", "--dp-epsilon", "4", "--dp-accountant", "pld"]
    flags += ["--grid", "svm-c=1,10", "--cv-folds", "3"]
    results = in_memory.run(tmp_path, *flags, over=in_memory.channel(rows=3_000))
    spent = [r["privacy"] for r in results["rounds"]]
    assert [s["noisy_releases"] for s in spent] == [
        {"noised date counts": 2, "noised statistics": 1, "noisy sums of updates": 13}
        | {"noised scores": 13},
        {"noised date counts": 2, "noised statistics": 1, "noisy sums of updates": 14}
        | {"noised scores": 14},
    ]
    # Calibrated for all 31, so the last round spends exactly the target; the first one less.
    assert spent[0]["epsilon"] < spent[1]["epsilon"] == pytest.approx(4.0, rel=1e-2)
    assert spent[1]["clear_releases"] == {}
    assert spent[1]["accountant"] == "pld"
    # Each fold's rounds say what they let out, as the final training's do, with the ε spent
    # to each: the 12 rounds before the final training's, in the order they ran.
    folds = results["disclosure"]["cross_validation"]
    assert [(f["params"], f["fold"]) for f in folds] == [
        ({"svm_c": c}, fold) for c in (1.0, 10.0) for fold in (1, 2, 3)
    ]
    ran = [e for f in folds for group in f["rounds"] for e in group["epsilon"]]
    assert all(g["first_round"] == 1 and g["last_round"] == 2 for f in folds for g in f["rounds"])
    assert ran == sorted(ran) and ran[0] > 0 and ran[-1] < spent[0]["epsilon"]
    assert all("noises the sum" in g["server"] for f in folds for g in f["rounds"])
    summary = format_summary(results)
    assert "cross-validation {'svm_c': 10.0}, fold 3, rounds 1–2 (ε" in summary


def clear_values_in(folder, values: set[float]) -> list[str]:
    """Each file under `folder` (and each array of each .npz) holding any of `values`: as a
    number in its text, or as an element of an array."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                for name in arrays.files:
                    array = arrays[name]
                    if array.dtype.kind in "US":
                        text = " ".join(map(str, array.ravel().tolist()))
                        found += [f"{path.name}:{name}" for v in values if repr(v) in text]
                    elif array.dtype.kind == "f" and np.isin(array, list(values)).any():
                        found.append(f"{path.name}:{name}")
        else:
            text = path.read_text(errors="replace")
            found += [path.name for v in values if repr(v) in text]
    return found


def test_under_central_dp_the_server_releases_only_noised_scores_and_writes_no_clear_one(
    tmp_path,
):
    """The server's own run in memory: each province's clipped MSE as the province computed it
    from its rows (clear to the trusted server), against everything the run wrote."""
    works = {p: in_memory.Scoring(synthesize_province(p, in_memory.ROWS, SEED)) for p in PROVINCES}
    flags = ["--model", "lr", "--rounds", "2", "--privacy", "dp-central", "--dp-epsilon", "3"]
    # Far above any row's squared error under the noised model (the largest seen: ~3,400), so
    # no clear score meets the clamp; B = 1000 let one in every thousand runs or so reach it.
    flags += ["--dp-score-clip", "1e6"]
    results = in_memory.run(tmp_path / "dp", *flags, over=MemoryChannel(works))
    clear: set[float] = set()
    for province, work in works.items():
        assert len(work.sent) == 2  # one evaluation a round
        for outcome in work.sent:
            assert set(outcome.metrics) == {"mse", "seconds"}  # clipped per row, no other score
            assert 0.0 < outcome.metrics["mse"] < 1e6  # inside, where no clamp could meet it
            clear.add(float(outcome.metrics["mse"]))
        for record in (*results["rounds"], results["final"]):
            released = record["per_client"][province]
            assert set(released) == {"mse", "n_test"}
            assert 0.0 <= released["mse"] <= 1e6 and released["mse"] not in clear
    assert all(r["train_mse"] is None for r in results["rounds"])
    assert clear_values_in(tmp_path, clear) == []
    summary = format_summary(results)
    assert not [v for v in clear if repr(v) in summary or f"{v:.6g}" in summary]
    spent = results["rounds"][-1]["privacy"]
    assert spent["noisy_releases"]["noised scores"] == 2
    assert spent["clear_releases"] == {}
    assert spent["epsilon"] == pytest.approx(3.0, rel=1e-2)
    metrics = results["disclosure"]["metrics"]["server"]
    assert "in the clear" in metrics and "releases each test MSE only noised" in metrics


def test_central_dp_noises_each_clipped_score_at_sigma_b_and_keeps_no_other_metric():
    settings = DPSettings("dp-central", 1.0, 0.5, 1e-5, score_clip=4.0)
    rng = np.random.default_rng(2)
    strategy = DPFedAvg(fedavg(), settings, np.random.default_rng(2))
    scores = [
        ClientResult(p, 10, {"mse": mse, "mae": 0.3, "seconds": 1.0})
        for p, mse in (("a", 1.0), ("b", 9.0), ("c", 2.0))
    ]
    evaluation = strategy.aggregate_evaluate(1, scores, [])
    # Taken into [0, B] first (b's 9 counts as 4), then N(0, (σ·B)²), clamped into [0, B].
    expected = np.clip(np.array([1.0, 4.0, 2.0]) + rng.normal(0.0, 0.5 * 4.0, 3), 0.0, 4.0)
    released = [evaluation.per_client[p]["mse"] for p in "abc"]
    np.testing.assert_allclose(released, expected)
    assert all(set(evaluation.per_client[p]) == {"mse", "n_test"} for p in "abc")
    assert evaluation.mse == pytest.approx(float(np.mean(expected)))
    trained = ClientResult("a", 10, {"train_mse": 0.25, "seconds": 1.0})
    assert strategy.accept_fit(1, trained).metrics == {"seconds": 1.0}


SMALL = ["--rounds", "1", "--dp-noise-multiplier", "1", "--min-clients", "9"]
MODELS = [
    *((mode, model) for mode in ("dp-central", "dp-local") for model in ("lr", "lr-sgd", "svm")),
    ("dp-local", "gbdt"),
    ("dp-local", "rf-hist"),
    ("dp-local", "rf"),
]
QUICK = {
    "svm": ["--svm-features", "50"],
    "gbdt": ["--gbdt-trees", "2", "--gbdt-max-depth", "3"],
    "rf-hist": ["--rfh-trees", "2", "--rfh-max-depth", "3"],
    "rf": ["--rf-n-estimators", "2", "--rf-global-trees", "18"],
}


@pytest.mark.parametrize(("mode", "model"), MODELS)
def test_every_dp_run_reports_one_finite_epsilon_and_no_clear_release(tmp_path, mode, model):
    flags = ["--model", model, "--privacy", mode, *SMALL, *QUICK.get(model, [])]
    results = in_memory.run(tmp_path, *flags, over=in_memory.channel(rows=3_000))
    for record in results["rounds"]:
        spent = record["privacy"]
        assert spent["clear_releases"] == {} and "note" not in spent
        assert spent["epsilon"] is not None and 0 < spent["epsilon"] < math.inf
        assert spent["noisy_releases"]["noised scores"] == record["round"]
        assert record["disclosure"]["epsilon"] == spent["epsilon"]


@pytest.mark.integration
def test_a_dp_central_federation_of_processes_writes_no_provinces_clear_score(tmp_path):
    """Real server and client processes over localhost; each province's clipped MSE of the
    final model computed here from its own rows, with the run's scaler and split: none of them
    is what the results release, nor anywhere in the files the run wrote."""
    args = [*FAST, "--privacy", "dp-central", "--dp-epsilon", "3", "--dp-score-clip", "1e6"]
    federation = LocalFederation(tmp_path, "lr", 2, ROWS, SEED, server_args=args)
    federation.start()
    codes = federation.wait(timeout=240)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    results = federation.results()
    split, stats = results["split"], results["statistics"]
    data = DataSettings(
        "next-day", 0.2, 0, split_start=split["start"], split_cutoff=split["cutoff"]
    )
    config = {**defaults(), "model": "lr", **results["task_context"], **data.to_config()}
    groups = TaskGroups.parse({**config, **DPScoring(1e6, 0.0).to_config()})
    scaler = (np.array(stats["mean"][:-1]), np.array(stats["std"][:-1]))
    with np.load(tmp_path / results["final"]["model_file"]) as stored:
        model = dict(stored)
    clear = {}
    for province in PROVINCES:
        work = LocalWork(synthesize_province(province, ROWS, SEED))
        scored = work.evaluate(groups, scaler, model)
        released = results["final"]["per_client"][province]
        assert released["n_test"] == scored.num_examples  # the same rows, scored here
        clear[province] = scored.metrics["mse"]
        assert 0 < clear[province] < 1e6 and released["mse"] != clear[province]
    assert clear_values_in(tmp_path, set(clear.values())) == []
    spent = results["rounds"][-1]["privacy"]
    assert spent["clear_releases"] == {} and spent["epsilon"] == pytest.approx(3.0, rel=1e-2)
