"""`python -m baselines.reproduce` end to end on tiny data: real federation processes, the
centralised job and Spark, then the paper's tables, charts, the MSE/ε trade-off and report."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from baselines import agreement, clear, paper, privacy, reproduce, reproduce_cli
from baselines.data import DataOptions, load_frames, write_synthetic
from baselines.report import Comparison, naive_findings, write_table
from common import forecast, preprocess
from common.registry import MODELS
from server.config import PrivacySettings

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"
SCORE_CLIP = PrivacySettings.dp_score_clip  # the sweep's B: the server's default


def table(path):
    with path.open() as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    return [dict(zip(header, row, strict=True)) for row in body]


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@pytest.mark.timeout(1800)  # a guard against a hang only: twelve jobs on a loaded machine
def test_reproduce_writes_both_tables_charts_and_a_report(spark_session, tmp_path, capsys):
    out = tmp_path / "reproduce"
    argv = ["--scale", "tiny", "--out", str(out), "--no-extras", "--master", "local[2]"]
    assert reproduce_cli.main(argv, session=spark_session) == 0
    printed = capsys.readouterr().out
    # LR (as lr-sgd, with its own run without DP) and SVM under DP, central and local.
    tiny = reproduce.SCALES["tiny"].sweep
    assert {mode for mode, _ in tiny} == set(privacy.MODES)
    sweep = 1 + 2 * len(tiny)
    assert f"(1/{9 + sweep}) federated lr" in printed and "report:" in printed

    for name in ("table2_mse", "table3_seconds"):
        rows = table(out / f"{name}.csv")
        assert [row["model"] for row in rows] == ["LR", "RF", "SVM"]
        for row, model in zip(rows, paper.MODELS, strict=True):
            for framework in paper.FRAMEWORKS:
                label = paper.FRAMEWORK_LABELS[framework]
                assert is_number(row[f"{label} (paper)"])
                if framework == "federated" and model not in MODELS:
                    assert row[label].startswith("n/a"), row  # until the server learns it
                else:
                    assert is_number(row[label]), (name, row)
        markdown = (out / f"{name}.md").read_text()
        assert all(f"| {label} |" in markdown for label in ("LR", "RF", "SVM"))
    for png in ("table2_mse.png", "table3_seconds.png", "convergence.png", "mse-epsilon.png"):
        assert (out / png).read_bytes().startswith(PNG)

    # FedAvg of local LR fits and Spark's weighted reduce are the same model.
    federated = json.loads((out / "results" / "federated-lr.json").read_text())
    decentralised = json.loads((out / "results" / "spark-lr.json").read_text())
    assert federated["final"]["mse"] == pytest.approx(decentralised["final"]["mse"], rel=1e-9)
    assert len(federated["rounds"]) == reproduce.SCALES["tiny"].rounds

    text = (out / "report.md").read_text()
    for needed in ("4,000 raw rows", "scikit-learn", "pyspark", "Java", "cores", "fit_seconds"):
        assert needed in text, needed
    assert "![Table 2 as bars](table2_mse.png)" in text
    assert "![MSE against ε](mse-epsilon.png)" in text
    assert "beat the naive forecast" in text and "| naive MSE | skill |" in text
    assert federated["final"]["naive_mse"] > 0 and "skill" in federated["final"]

    # Each model without DP (ε = ∞) and in each DP mode at each ε, its final model scored in
    # the clear. The recorded MSE under DP is the released one, clipped to [0, B], noised and
    # clamped (by the server or by each province), so no order holds of it; without DP it is
    # the provinces' own clear score, which the harness's must equal, and each model's ε = ∞
    # point is its plain run.
    points = table(out / "privacy.csv")
    released = {
        "dp-central": "DP release, noised by the server",
        "dp-local": "DP release, noised by each province",
    }
    for model in ("lr-sgd", "svm"):
        rows = {r["mode"]: r for r in points if r["model"] == model}
        wanted = [privacy.dp_label(e, mode) for mode, e in tiny]
        assert sorted(rows) == sorted([privacy.PLAIN, *wanted]), points
        for label, row in rows.items():
            clear, naive = float(row["clear_mse"]), float(row["naive_mse"])
            assert math.isfinite(clear) and clear >= 0 and naive > 0, row
            assert float(row["clear_skill"]) == pytest.approx(1 - clear / naive, rel=1e-9)
            assert int(row["test_rows"]) > 0
            if label != privacy.PLAIN:
                mode = label.split()[0]
                assert math.isfinite(float(row["epsilon"])), row
                assert row["recorded_as"] == released[mode], row
                assert 0.0 <= float(row["recorded_mse"]) <= SCORE_CLIP, row
        plain = rows[privacy.PLAIN]
        assert float(plain["epsilon"]) == math.inf and plain["recorded_as"] == "clear"
        assert float(plain["clear_mse"]) == pytest.approx(float(plain["recorded_mse"]), rel=1e-9)
    # svm's ε = ∞ point is the comparison's own federated run.
    federated_svm = json.loads((out / "results" / "federated-svm.json").read_text())["final"]
    svm_plain = next(r for r in points if r["model"] == "svm" and r["mode"] == "plain")
    assert float(svm_plain["clear_mse"]) == pytest.approx(federated_svm["mse"], rel=1e-9)
    assert int(svm_plain["test_rows"]) == sum(
        s["n_test"] for s in federated_svm["per_client"].values()
    )
    assert "| clear MSE | naive MSE | skill |" in text and "the one DP releases" in text


@pytest.mark.timeout(900)  # a guard against a hang only
def test_the_clear_score_of_a_dp_model_is_its_mse_on_the_union_of_the_test_rows(tmp_path):
    """A real dp-central federation of lr-sgd; its saved model scored by the harness equals
    the model's MSE computed here by hand on the union of the provinces' test rows, split at
    the run's (noised) cutoff and scaled by its (noised) scaler; rows of another market or a
    missing province are refused."""
    data = write_synthetic(tmp_path / "data", 4_000, 7)
    options = DataOptions(data=str(data), rows=4_000, seed=7)
    scale = reproduce.SCALES["tiny"]
    flags = privacy.dp_flags("lr-sgd", 1.0)
    outcome = reproduce.run_federation(
        "lr-sgd", options, scale, tmp_path, reproduce.Progress(1), flags, "dp"
    )
    folder = tmp_path / "federated" / "dp"
    frames = load_frames(options)
    scored = clear.score(outcome, folder, frames)

    split, stats, context = outcome["split"], outcome["statistics"], outcome["task_context"]
    parts = [preprocess.split(raw, cutoff=split["cutoff"]) for raw in frames.values()]
    x = np.vstack([p.x_test for p in parts])
    y = np.concatenate([p.y_test for p in parts])
    std = np.array(stats["std"][:-1])
    scaled = (x - np.array(stats["mean"][:-1])) / np.where(std == 0, 1.0, std)
    with np.load(folder / "model.npz") as model:
        move = scaled @ model["coef"] + model["intercept"]
    close = x[:, preprocess.NEXT_DAY_FEATURES.index("close")]
    prediction = close + context["change_mean"] + move * context["change_std"]
    assert scored.mse == pytest.approx(float(np.mean((prediction - y) ** 2)), rel=1e-9)
    assert scored.pooled()["last_close_mse"] == pytest.approx(float(np.mean((close - y) ** 2)))
    assert sum(s["n_test"] for s in scored.per_client.values()) == len(y)

    other = load_frames(DataOptions(rows=3_000, seed=8))
    with pytest.raises(ValueError, match="test rows"):
        clear.score(outcome, folder, other)
    with pytest.raises(ValueError, match="provinces"):
        clear.score(outcome, folder, dict(list(frames.items())[1:]))


def test_the_sweep_runs_each_model_in_each_dp_mode_at_each_epsilon(tmp_path):
    def points(*models: str) -> list[tuple[str, str, float]]:
        small = reproduce.SCALES["small"]
        plan = reproduce.Plan(
            DataOptions(), small, tmp_path, "local[1]", "1g", False, True, "small", models
        )
        return plan.privacy_points()

    both = points("lr", "svm")
    # lr-sgd is not in the comparison, so the sweep makes its run without DP first.
    assert both[0] == ("lr-sgd", privacy.PLAIN, math.inf)
    for model in ("lr-sgd", "svm"):
        for mode in ("dp-central", "dp-local"):
            epsilons = [e for m, d, e in both if (m, d) == (model, mode)]
            assert epsilons == list(privacy.EPSILONS), both
    assert len(both) == 1 + 2 * 2 * len(privacy.EPSILONS)
    # svm's run without DP is the comparison's own; without lr, no lr-sgd.
    assert points("svm") == [("svm", mode, e) for mode, e in privacy.SWEEP]
    assert points("rf") == []


def test_a_table_says_why_a_cell_is_empty(tmp_path):
    run = {"final": {"mse": 0.5, "train_seconds": 2.0, "per_client": {}}}
    comparison = Comparison(
        runs={("centralised", "lr"): run}, missing={("federated", "rf"): "n/a (not yet supported)"}
    )
    csv_path, md_path = write_table(comparison, "mse", tmp_path)
    rows = table(csv_path)
    assert rows[0]["Centralised"] == "0.5" and rows[0]["Centralised (paper)"] == "0.011"
    assert rows[1]["FL"] == "n/a (not yet supported)"
    assert rows[2]["Decentralised"] == "n/a"
    assert "| LR | n/a (paper 27.21) | 0.5 (paper 0.011) |" in md_path.read_text()


def test_the_report_names_the_runs_that_do_not_beat_the_naive_forecast():
    def run(mse: float) -> dict:
        means = {"mse": mse, "persistence_mse": 0.4, "last_close_mse": 0.2}
        final = {**means, **forecast.derived(means), "train_seconds": 1.0, "per_client": {}}
        return {"final": final}

    losing = Comparison(runs={("centralised", "lr"): run(0.1), ("federated", "lr"): run(0.25)})
    (line,) = naive_findings(losing)
    assert line.startswith("1 of 2 runs do not beat the naive forecast") and "federated lr" in line
    assert "centralised" not in line
    (line,) = naive_findings(Comparison(runs={("centralised", "lr"): run(0.1)}))
    assert line.startswith("Every run beats the naive forecast")
    assert naive_findings(Comparison(runs={("centralised", "lr"): {"final": {"mse": 0.1}}})) == []


@pytest.mark.timeout(1800)  # a guard against a hang only: six jobs on a loaded machine
def test_the_paper_setting_runs_beside_the_default_with_the_agreement_section(
    spark_session, tmp_path
):
    out = tmp_path / "paper"
    argv = ["--scale", "tiny", "--out", str(out), "--setting", "paper", "--beside", "next-day"]
    argv += ["--models", "lr", "--no-privacy", "--no-extras", "--master", "local[2]"]
    assert reproduce_cli.main(argv, session=spark_session) == 0
    federated = json.loads((out / "results" / "federated-lr.json").read_text())
    assert federated["setting"] == "paper"
    assert federated["model_selection"]["folds"] == 5  # the paper's 5-fold cross-validation
    for framework in ("centralised", "spark"):
        selection = json.loads((out / "results" / f"{framework}-lr.json").read_text())
        assert selection["model_selection"]["folds"] == 5, framework
        assert selection["model_selection"]["kind"] == "random", framework
    beside = json.loads((out / "next-day" / "results" / "federated-lr.json").read_text())
    assert beside["setting"] == "next-day" and "model_selection" not in beside
    beside_centralised = out / "next-day" / "results" / "centralised-lr.json"
    assert "model_selection" not in json.loads(beside_centralised.read_text())

    text = (out / "report.md").read_text()
    assert "## Agreement with the paper" in text and "ours, next-day setting" in text
    chosen = {line.split("|")[1].strip() for line in text.splitlines() if "| 5 random |" in line}
    assert chosen == {"federated", "centralised", "spark"}  # the model-selection table
    std = reproduce.target_std(DataOptions(data=str(out / "data"), rows=4_000, setting="paper"))
    mse = federated["final"]["mse"]
    row = next(line for line in text.splitlines() if line.startswith("| 2 (MSE, yuan²) | LR | FL"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[4]) == pytest.approx(mse, rel=1e-4)
    assert float(cells[5]) == pytest.approx(mse / std**2, rel=1e-3)  # standardised units
    assert float(cells[9]) == pytest.approx(beside["final"]["mse"], rel=1e-4)
    assert "| 2 (MSE, yuan²) | RF | FL | 0.021 | not run (--models) |" in text
    assert "## Agreement with the paper" in (out / "next-day" / "report.md").read_text()


def test_the_causes_name_the_switch_and_its_measured_figures():
    def run(mse: float) -> dict:
        return {"final": {"mse": mse, "train_seconds": 1.0, "per_client": {}}}

    runs = {("federated", "lr"): run(0.02), ("centralised", "lr"): run(0.019)}
    runs[("spark-own-scaling", "lr")] = run(100.0)
    lr, *_ = agreement.causes(Comparison(runs=runs))
    assert "(`python -m baselines.spark --scaling province`): MSE 100, 5.26e+03×" in lr
    assert "(MSE 0.02, 1.05× the centralised 0.019)" in lr
    unmeasured = agreement.causes(Comparison(runs={("federated", "lr"): run(0.02)}))
    assert not any(line.startswith("LR") for line in unmeasured)  # no switch run, no claim


def test_agreement_ranks_each_cell_against_the_papers_order_and_size():
    def run(mse: float) -> dict:
        return {"final": {"mse": mse, "train_seconds": 1.0, "per_client": {}}}

    # The paper's LR: FL worst, centralised best; here FL is best and Spark within 10×.
    comparison = Comparison(
        runs={
            ("federated", "lr"): run(0.001),
            ("centralised", "lr"): run(0.02),
            ("spark", "lr"): run(0.1),
        },
        setting="paper",
        target_std=2.0,
    )
    lines = agreement.cell_table(comparison, None, "")
    fl, central, spark = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:5])
    assert fl[6:9] == ["1 (3)", "no", "no (3.68e-05×)"]
    assert fl[5] == "0.00025"  # 0.001 / 2²
    assert central[7] == "no" and central[8].startswith("yes")
    assert spark[6:8] == ["3 (2)", "no"]
