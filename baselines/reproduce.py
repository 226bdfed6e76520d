"""`python -m baselines.reproduce`: the seed paper's comparison in one command.

Runs the real federation (a server and nine client processes over localhost), the centralised
job and the Spark job for LR, RF and SVM on the same Parquet files, split and scaling, then
writes the paper's Tables 2 and 3 beside ours, charts and a report (`baselines.report`). LR (as
the gradient-trained lr-sgd) and SVM are federated again under client-level DP, central and
local, at a few ε, for the MSE/ε trade-off (`baselines.privacy`). Models come from the server's
own list, so a model the federation learns is picked up here.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baselines import centralised, machine, paper, privacy, report, results, spark
from baselines.data import DataOptions, load_frames, prepare
from baselines.models import ModelOptions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
from common import quantity
from common.hyperparameters import ALL_OPTIONS
from common.launch import LocalFederation
from common.models.histgrow import TREE_MODELS
from common.registry import MODELS, model_spec


@dataclass(frozen=True)
class Scale:
    rows: int
    options: ModelOptions  # options.rounds: the federation's rounds, and the SVM's everywhere
    driver_memory: str
    timeout: float  # seconds for one federated run
    sweep: tuple[tuple[str, float], ...] = privacy.SWEEP  # (DP mode, ε) of the DP sweep

    @property
    def rounds(self) -> int:
        return self.options.rounds


SCALES = {
    # For the test suite: seconds per run.
    "tiny": Scale(
        4_000,
        ModelOptions(trees=4, max_depth=6, components=50, svr_rows=400, rounds=2),
        "1g",
        900,
        (("dp-central", 1.0), ("dp-local", 1.0)),
    ),
    # The default: the client's default market, a few minutes in all on two cores.
    "small": Scale(
        270_000,
        ModelOptions(trees=20, max_depth=12, components=300, svr_rows=5_000, rounds=3),
        "2g",
        3600,
    ),
    # The paper's row count and Table 1's 100 trees (depth-limited: see the notes).
    "paper": Scale(
        paper.PAPER_ROWS,
        ModelOptions(trees=100, max_depth=16, components=500, svr_rows=20_000, rounds=3),
        "6g",
        6 * 3600,
    ),
}
# Histogram trees leave no per-province part to merge: on Spark they are MLlib's own.
TREE_FRAMEWORKS = ("federated", "centralised", "spark-mllib")
# Further comparisons, each beside the table's model it accompanies: (model, framework, job).
EXTRAS = (
    ("lr", "spark-mllib", "lr"),
    # FedAvg LR is Spark's row-weighted average of the provinces' fits; scaled as clients that
    # each fit their own scaler, it shows what per-province scaling does to the average.
    ("lr", "spark-own-scaling", "lr"),
    ("rf", "spark-mllib", "rf"),
    # Trees from summed histograms, beside the paper's union of the provinces' own trees.
    *(("rf", framework, tree) for tree in TREE_MODELS for framework in TREE_FRAMEWORKS),
    ("svm", "federated", "svr"),
    ("svm", "centralised", "svr"),
    ("svm", "spark", "svr"),
)
# The paper's model selection, in its setting: 5-fold cross-validation, and for the SVM a grid
# search over C (it reports C = 1 best). The forest has no searched parameter (Table 1).
PAPER_FOLDS = 5
PAPER_SELECTION = {
    "lr": ("--cv-folds", str(PAPER_FOLDS)),
    "svm": ("--cv-folds", str(PAPER_FOLDS), "--grid", "svm-c=0.1,1,10"),
}
# The server's name for a model where it differs from ours.
SERVER_MODELS = {"svr": "svm-local-rbf"}
# Ensembles: each round grows a fresh one that replaces the last, so one round is the model.
ONE_ROUND = ("rf", "svr")
# Federated runs that also value each province, rank the features and personalise, after their
# last round (one extra phase; Table 3's training time leaves it out).
ANALYSED = {model: ("--contributions", "--importance", "--personalise") for model in ("lr", "svm")}


class Progress:
    """Numbered progress lines, flushed at once, with the time each step took."""

    def __init__(self, steps: int) -> None:
        self.steps, self.done = steps, 0
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{elapsed:7.1f} s] {text}", flush=True)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[dict[str, Any]]:
        self.done += 1
        self.say(f"({self.done}/{self.steps}) {label} …")
        started, outcome = time.perf_counter(), {}
        yield outcome
        took = time.perf_counter() - started
        detail = f", MSE {outcome['mse']:.6g}" if "mse" in outcome else ""
        self.say(
            f"({self.done}/{self.steps}) {label}: {outcome.get('status', 'done')} "
            f"in {took:.1f} s{detail}"
        )


def for_setting(scale: Scale, setting: str) -> Scale:
    """In the paper's setting, RF and SVM learn the price itself, as the paper's do."""
    if setting != "paper":
        return scale
    return replace(scale, options=replace(scale.options, target="price"))


def federation_models() -> list[str]:
    """Our models that the federation's server can train now."""
    return [m for m in (*paper.MODELS, "svr", *TREE_MODELS) if SERVER_MODELS.get(m, m) in MODELS]


def federation_flags(model: str, options: ModelOptions, data: DataOptions) -> list[str]:
    """Server flags for the same split and, where the server has such flags, the same
    hyperparameters; a flag the model does not have, or a value it cannot take, is left out
    (the report lists the federation's own configuration)."""
    flags = ["--setting", data.setting, "--test-fraction", str(data.test_fraction)]
    flags += ["--seed", str(data.split_seed), "--forecast", data.forecast]
    wanted = {
        "rf": {  # each province grows the paper's forest; the global one keeps `trees` of them
            "--rf-n-estimators": options.trees,
            "--rf-global-trees": options.trees,
            "--rf-max-depth": options.max_depth or 0,
            "--rf-target": options.target,
        },
        "svm": {
            "--svm-features": options.components,
            "--svm-seed": options.seed,
            "--svm-learning-rate": options.learning_rate,
            "--svm-epochs": options.epochs,
            "--svm-target": options.target,
        },
        "svr": {
            "--svm-subsample": options.svr_rows,
            "--svm-seed": options.seed,
            "--svm-target": options.target,
        },
    }.get(model, {})
    prefix = model_spec(SERVER_MODELS.get(model, model)).hyperparameters
    for flag, value in wanted.items():
        option = ALL_OPTIONS[flag.removeprefix("--").replace("-", "_")]
        try:
            option.parse(str(value))
        except ValueError:
            continue
        if prefix and option.name.startswith(prefix):
            flags += [flag, str(value)]
    return flags


def run_federation(
    model: str,
    data: DataOptions,
    scale: Scale,
    out: Path,
    progress: Progress,
    extra: Sequence[str] = (),
    name: str | None = None,
) -> dict[str, Any]:
    """The real federation for `model`, with `extra` server flags, in federated/<name or model>;
    its results document, or RuntimeError saying why not."""
    folder = out / "federated" / (name or model)
    folder.mkdir(parents=True, exist_ok=True)
    rounds = 1 if model in ONE_ROUND else scale.rounds
    federation = LocalFederation(
        out=folder,
        model=SERVER_MODELS.get(model, model),
        rounds=rounds,
        data=Path(str(data.data)),
        server_args=[
            *federation_flags(model, scale.options, data),
            "--poll-seconds",
            "2",
            # one round of a forest on millions of rows outlasts the server's default deadline
            "--round-timeout",
            str(scale.timeout),
            *extra,
        ],
    )
    federation.results_path.unlink(missing_ok=True)
    started = time.perf_counter()
    federation.start()
    try:
        finished = _follow(federation, model, scale, progress)
        codes = federation.wait(timeout=60 if finished else 1)
    finally:
        federation.kill()  # on an interrupt too: leave no process behind
    wall = time.perf_counter() - started
    failed = {name: code for name, code in codes.items() if code != 0}
    outcome = federation.results() if federation.results_path.exists() else {}
    if failed or not outcome.get("final"):
        raise RuntimeError(f"failed: see the logs in {folder}")
    outcome["framework"] = "federated"
    outcome["final"]["wall_seconds"] = wall
    outcome["params"] = {"rounds": rounds, **_model_config(outcome)}
    return outcome


def _follow(federation: LocalFederation, model: str, scale: Scale, progress: Progress) -> bool:
    """Show each round as the server records it, until the server exits (True), or a client
    fails or the scale's time is up (False)."""
    started, seen = time.perf_counter(), 0
    server = federation.server
    while server is not None and server.poll() is None:
        crashed = [p for p, c in federation.clients.items() if c.poll() not in (None, 0)]
        if crashed or time.perf_counter() - started > scale.timeout:
            return False
        time.sleep(2)
        rounds = _rounds_so_far(federation.results_path)
        for record in rounds[seen:]:
            mse = "n/a" if record.get("mse") is None else f"{record['mse']:.6g}"
            where = f"round {record['round']}/{federation.rounds}"
            progress.say(f"    federated {model}: {where}, MSE {mse}")
        seen = max(seen, len(rounds))
    return True


def _rounds_so_far(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text()).get("rounds", [])
    except (OSError, ValueError):
        return []


def _model_config(outcome: dict[str, Any]) -> dict[str, str]:
    """The model's own settings from the server's recorded configuration (rf_*, svm_*)."""
    prefix = model_spec(outcome["model"]).hyperparameters
    config = outcome.get("config", {})
    return {k: v for k, v in config.items() if prefix and k.startswith(prefix)}


@dataclass
class Plan:
    """What to run: one job per (framework, model), and how to run it."""

    data: DataOptions
    scale: Scale
    out: Path
    master: str
    driver_memory: str
    extras: bool
    synthetic: bool
    scale_name: str
    models: tuple[str, ...] = paper.MODELS
    privacy: bool = True

    def jobs(self) -> list[tuple[str, str]]:
        keys = [(f, m) for f in paper.FRAMEWORKS for m in self.models]
        extras = [(f, job) for model, f, job in EXTRAS if model in self.models]
        return keys + (extras if self.extras else [])

    def privacy_points(self) -> list[tuple[str, str, float]]:
        """(model, mode, ε) of the DP sweep: each swept model at each of the scale's (DP mode,
        ε), after its run without DP (`privacy.PLAIN`, ε = ∞) unless the comparison already
        makes that run."""
        if not self.privacy:
            return []
        points = []
        for model, stands_for in privacy.PAPER_MODEL.items():
            if stands_for in self.models:
                if model not in self.models:  # no federated run of it to compare with
                    points.append((model, privacy.PLAIN, math.inf))
                points += [(model, mode, e) for mode, e in self.scale.sweep]
        return points


def execute(plan: Plan, session: SparkSession | None = None) -> report.Comparison:
    """Every job of the plan, in order; a Spark session is started at the first Spark job
    unless one is given (and then it is left running for its owner)."""
    comparison = report.Comparison()
    jobs = plan.jobs()
    progress = Progress(len(jobs) + len(plan.privacy_points()))
    supported = federation_models()
    owned = session is None
    session_seconds = 0.0
    loaded: spark.Loaded | None = None  # read once, shared by every Spark job
    for model in set(paper.MODELS) - set(plan.models):
        for framework in paper.FRAMEWORKS:
            comparison.missing[(framework, model)] = "not run (--models)"
    try:
        for framework, model in jobs:
            label = f"{framework} {model}"
            with progress.step(label) as shown:
                try:
                    if framework == "federated":
                        if model not in supported:
                            raise RuntimeError("n/a (not yet supported)")
                        outcome = run_federation(
                            model,
                            plan.data,
                            plan.scale,
                            plan.out,
                            progress,
                            extra=selection(model, plan.data) + ANALYSED.get(model, ()),
                        )
                    elif framework == "centralised":
                        outcome = centralised.run(
                            model, plan.data, plan.scale.options, cv_folds=folds(model, plan.data)
                        )
                    else:
                        if session is None:
                            progress.say("    starting the Spark session …")
                            started = time.perf_counter()
                            session = spark.start_session(plan.master, plan.driver_memory)
                            session_seconds = time.perf_counter() - started
                            progress.say(f"    Spark session up in {session_seconds:.1f} s")
                        if loaded is None:
                            progress.say("    Spark: reading and splitting the provinces …")
                            loaded = spark.load(session, plan.data)
                            progress.say(f"    Spark: data cached in {loaded.seconds:.1f} s")
                        engine = "mllib" if framework == "spark-mllib" else "sklearn"
                        outcome = spark.run(
                            session,
                            model,
                            plan.data,
                            plan.scale.options,
                            engine,
                            session_seconds,
                            loaded,
                            "province" if framework == "spark-own-scaling" else "global",
                            cv_folds=folds(model, plan.data) if engine == "sklearn" else 0,
                        )
                except (RuntimeError, ValueError, OSError) as error:
                    comparison.missing[(framework, model)] = str(error)
                    shown["status"] = str(error)
                    continue
                comparison.runs[(framework, model)] = outcome
                results.write(plan.out / "results" / f"{framework}-{model}.json", outcome)
                shown["mse"] = outcome["final"]["mse"]
    finally:
        if loaded is not None:
            loaded.release()
        if owned and session is not None:
            session.stop()
    comparison.privacy = privacy_sweep(plan, comparison, progress)
    comparison.setup = setup(plan, comparison, session_seconds)
    comparison.notes = notes(plan, session_seconds)
    comparison.setting = plan.data.setting
    comparison.forecast = plan.data.forecast
    comparison.target_std = target_std(plan.data)
    return comparison


def target_std(data: DataOptions) -> float:
    """The deviation of the training rows' target, in its quantity's unit (yuan for the price):
    the unit of standardised MSEs."""
    return prepare(load_frames(data), data).scaling.task["target_std"]


def selection(model: str, data: DataOptions) -> tuple[str, ...]:
    """The paper's cross-validation and grid for `model`, in the paper's setting only."""
    return PAPER_SELECTION.get(model, ()) if data.setting == "paper" else ()


def folds(model: str, data: DataOptions) -> int:
    """The centralised and Spark jobs' share of the paper's model selection: the same folds,
    at the flags' values (no C to search: Table 1's C = 1, the paper's choice)."""
    return PAPER_FOLDS if selection(model, data) else 0


def privacy_sweep(
    plan: Plan, comparison: report.Comparison, progress: Progress
) -> list[dict[str, Any]]:
    """Each point of the plan's DP sweep as a row, after the model's run without DP (ε=∞):
    the comparison's own federated run, or the sweep's first point. Each run's final model is
    scored in the clear on the provinces' rows, which this machine holds (it made them)."""
    rows: list[dict[str, Any]] = []
    if not plan.privacy_points():
        return rows
    frames = load_frames(plan.data)
    for model in dict.fromkeys(m for m, _, _ in plan.privacy_points()):
        plain = comparison.runs.get(("federated", model))
        if plain is not None:
            folder = plan.out / "federated" / model
            try:
                rows.append(privacy.summarise(model, privacy.PLAIN, plain, folder, frames))
            except ValueError as error:  # not the rows the run scored
                rows.append({"model": model, "mode": privacy.PLAIN, "failed": str(error)})
        for mode, epsilon in ((d, e) for m, d, e in plan.privacy_points() if m == model):
            dp = mode != privacy.PLAIN
            label = privacy.dp_label(epsilon, mode) if dp else privacy.PLAIN
            name = f"{model}-{mode}-epsilon-{epsilon:g}" if dp else model
            with progress.step(f"federated {model} {label}") as shown:
                try:
                    flags = privacy.dp_flags(model, epsilon, mode) if dp else []
                    outcome = run_federation(
                        model, plan.data, plan.scale, plan.out, progress, flags, name
                    )
                    folder = plan.out / "federated" / name
                    row = privacy.summarise(model, label, outcome, folder, frames)
                except (RuntimeError, ValueError) as error:
                    rows.append({"model": model, "mode": label, "failed": str(error)})
                    shown["status"] = str(error)
                    continue
                rows.append(row)
                shown["status"] = (
                    f"clear MSE {row['clear_mse']:.6g} (recorded {row['recorded_mse']:.6g}: "
                    f"{row['recorded_as']})"
                )
    return rows


def setup(plan: Plan, comparison: report.Comparison, session_seconds: float) -> dict[str, Any]:
    data, o = plan.data, plan.scale.options
    source = (
        f"synthetic A-share market, {data.rows:,} raw rows (seed {data.seed}), in {data.data}"
        if plan.synthetic
        else f"Parquet files in {data.data}"
    )
    any_run = next(iter(comparison.runs.values()), None)
    used = "no run finished"
    if any_run is not None:
        train = any_run["statistics"]["rows"]
        test = sum(s["n_test"] for s in any_run["final"]["per_client"].values())
        used = f"{train:,} training + {test:,} test rows after cleaning ({train + test:,})"
    target = {
        "next-day": "next trading day's price; each province split by time",
        "paper": "same-day price; each province split at random, as the paper",
    }[data.setting]
    facts: dict[str, Any] = {
        "scale": plan.scale_name,
        "data": source,
        "rows used": used,
        "setting": f"{data.setting} ({target}); test fraction {data.test_fraction}",
        "forecast": quantity.label(data.forecast),
        "federated rounds": plan.scale.rounds,
        "RF": f"{o.trees} trees, max_depth {o.max_depth or 'none'}, max_features 1.0, bootstrap",
        "RF and SVM target": "tomorrow's change from today's close (the federation's default)"
        if o.target == "change"
        else "the price itself, as the paper",
        "SVM": f"RBF kernel via {o.components} random Fourier features, ε-insensitive linear "
        f"model (ε=0.1, C=1), {o.rounds} rounds of {o.epochs} epoch(s), step {o.learning_rate}",
        "SVR (extra)": f"exact SVR(kernel='rbf'), Table 1 settings, on {o.svr_rows:,} sampled "
        "rows of each part (all rows centralised, each province otherwise)",
        "Spark": f"master {plan.master}, driver memory {plan.driver_memory}, "
        f"session start-up {session_seconds:.1f} s",
    }
    if plan.privacy_points():
        clips = ", ".join(f"{m.upper()} {c:g}" for m, c in privacy.CLIPS.items())
        modes = "; ".join(
            f"{mode} at ε = " + ", ".join(f"{e:g}" for m, e in plan.scale.sweep if m == mode)
            for mode in dict.fromkeys(m for m, _ in plan.scale.sweep)
        )
        facts["DP sweep"] = (
            f"client-level DP, {modes}, over all rounds (δ = 1e-5), clip norm {clips}; each "
            "final model scored in the clear on its run's test rows"
        )
    facts.update(machine.machine())
    facts.update(machine.versions())
    return facts


def notes(plan: Plan, session_seconds: float) -> list[str]:
    chosen = [
        f"In the paper's setting the federated {m.upper()} runs the paper's model selection "
        f"first (`{' '.join(flags)}`): the federation's cross-validation on each province's "
        "training rows. The centralised and Spark jobs cross-validate with the same folds (of "
        "the union; of each partition, merged by the reduce) at the flags' values, with no grid "
        "(C = 1, the paper's choice)."
        for m, flags in PAPER_SELECTION.items()
        if plan.data.setting == "paper" and m in plan.models
    ]
    return [
        *chosen,
        "Same data, split and scaling everywhere: each province splits its own rows with "
        "`common.preprocess.split`; features are scaled with the global mean and deviation of all "
        "training rows (the federation's scaler), except the `spark-own-scaling` run, where "
        "each province scales its rows by its own statistics. MSE is in "
        f"{quantity.MSE_UNITS[plan.data.forecast]} ({plan.data.forecast}), weighted by each "
        "province's test rows.",
        "Training time, federated: the server's `train_seconds`, from the first round to the "
        "final metrics (all rounds, with evaluation and transport; data loading excluded).",
        "Training time, centralised: fitting the model on the union of training rows.",
        "Training time, Spark (the reported figure): `fit_seconds`, the `mapPartitions` fit on "
        "nine province partitions plus the reduce that merges them, on rows already read, split "
        "and cached. The rows are read once per session and shared by the Spark jobs; each "
        "job's `job_seconds` (in 'Every run') still counts that reading and splitting, plus "
        "fitting and scoring, as a job on its own would take, without the session start-up; "
        "`runs.csv` adds `total_seconds`, which includes the session start-up "
        f"({session_seconds:.1f} s here: the JVM and the Python workers).",
        "Spark merges as the federation does, with the federation's codecs: LR and SVM weights "
        "are averaged by training rows; the forest is the union of the provinces' trees "
        "(`common.models.forest`), each growing trees in proportion to its rows. `spark-mllib` "
        "rows are Spark MLlib's own LinearRegression and RandomForestRegressor "
        "(VectorAssembler + StandardScaler) on the same split rows; for gbdt and rf-hist, "
        "which merge no parts, its GBTRegressor and RandomForestRegressor on tomorrow's change "
        "from today's close (no L2 leaf regularisation in MLlib).",
        "SVM: an exact RBF SVR cannot be trained on millions of rows (its cost grows with the "
        "square of the rows) and its support vectors cannot be averaged, so the SVM of the "
        "tables is the federation's (`common.models.rff`): rows mapped through random Fourier "
        "features drawn from a shared seed, an ε-insensitive linear model trained by "
        "preconditioned subgradient steps on the standardised target, weights averaged by rows "
        "after each round. Spark and the centralised job run the same rounds, with the "
        "preconditioner from all rows' Gram matrix from the first round on (the federation "
        "starts from each province's own). The paper's literal SVR(kernel='rbf') on a row "
        "sample is the extra `svr` run (the server's svm-local-rbf: the mean of the "
        "provinces' SVRs; not private, its support vectors are rows).",
        "Forests and SVR ensembles are federated in one round: each further round would grow "
        "a fresh ensemble that replaces the last.",
        "The forest's trees are depth-limited: full-depth trees on millions of rows take "
        "hundreds of MB each. Federated cells marked n/a are models the server does not "
        "train yet.",
        "The paper's figures come from real JoinQuant data 2014–2020 and its own machine; "
        "ours from the data and machine above, so compare orders and rankings, not values.",
    ]


if __name__ == "__main__":  # the command line is baselines/reproduce_cli.py
    from baselines.reproduce_cli import main

    sys.exit(main())
