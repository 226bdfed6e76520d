"""`python -m baselines.spark`: the seed paper's decentralised framework on Apache Spark.

Rows are read with Spark's own Parquet reader (never collected to the driver), keyed by
province into an RDD of exactly nine partitions, one province each. Every partition splits its
rows as a federation client would; a reduce over per-partition sums gives the global scaler;
`mapPartitions` trains the scikit-learn model on each province and a reduce merges the nine
(`baselines.models`). Spark MLlib's own LinearRegression and RandomForestRegressor run on the
same split rows too, as the choice a Spark user would make, and its GBTRegressor and
RandomForestRegressor stand for gbdt and rf-hist: like them, histogram learners over binned
features, and, as histogram trees leave nothing per partition to merge, the only Spark way.

The same job runs against a cluster (`--master spark://host:7077`) when `--data` is on storage
every executor can read and the executors have this project's dependencies.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from baselines import results
from baselines.data import (
    DataOptions,
    Scaling,
    add_sums,
    split_province,
    with_cutoff,
    write_synthetic,
)
from baselines.models import (
    Context,
    ModelOptions,
    build_model,
    per_province,
    train,
)
from common import forecast, preprocess, quantity, timesplit
from common.crossval import fold_split
from common.data import RAW_COLUMNS, validate_raw
from common.data.schema import ORACLE
from common.models.histgrow import TREE_MODELS
from common.provinces import PROVINCES
from common.tensors import Arrays

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import SparkSession

ENGINES = ("sklearn", "mllib")
# global: the federation's scaler over all training rows; province: each its own (the paper's
# federation as its clients scale: each fits its own StandardScaler).
SCALINGS = ("global", "province")
MLLIB_MODELS = ("lr", "rf", "gbdt", "rf-hist")
LABEL = "label"  # what MLlib learns: the target, or its change from today's close (trees)
MLLIB_MAX_DEPTH = 30  # MLlib's own limit on tree depth
PACKAGES = ("baselines", "common", "server", "client", "proto")  # what executors import
ProvinceSplit = tuple[str, preprocess.Split]


def start_session(master: str, driver_memory: str = "4g") -> SparkSession:
    """A Spark session whose Python workers run this interpreter (the venv's)."""
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        raise RuntimeError("Spark needs a Java runtime (17 or newer): run `make java`")
    local = master.startswith("local")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if local:  # everything on this machine: stay on the loopback
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName("fedstock-baselines")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        # pandas writes dates as nanosecond timestamps, which Spark reads only as longs;
        # `validate_raw` turns those back into dates.
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if local:
        builder = (
            builder.config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if not local:
        spark.sparkContext.addPyFile(str(_code_archive()))
    _warm_up(spark)
    return spark


def _warm_up(spark: SparkSession) -> None:
    """Start the Python workers and import the models there, as part of the session's start-up,
    so the first job's times are not charged for it."""
    slots = spark.sparkContext.defaultParallelism
    spark.sparkContext.parallelize(range(slots), slots).map(_import_models).collect()


def _import_models(_: int) -> int:
    """Nothing to do: running it on a worker imports this module, and with it the models."""
    return 0


def _code_archive() -> Path:
    """This project's packages in one zip, for executors on other machines."""
    root = Path(__file__).resolve().parent.parent
    archive = Path(tempfile.mkdtemp(prefix="fedstock-code-")) / "fedstock.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for package in PACKAGES:
            for path in (root / package).rglob("*.py"):
                out.write(path, path.relative_to(root))
    return archive


# Partition functions run on the executors: module-level, taking only small picklable values.


def _raw_partition(columns: list[str]) -> Callable[[int, Iterable], Iterator[tuple]]:
    def run(index: int, pairs: Iterable[tuple[int, tuple]]) -> Iterator[tuple[str, pd.DataFrame]]:
        rows = [values for _, values in pairs]
        if rows:  # a province with no file leaves its partition empty
            province = PROVINCES[index]
            yield province, validate_raw(pd.DataFrame(rows, columns=columns), province)

    return run


def _setup_partition(
    model: str, context: Context, scalings: Mapping[str, Scaling]
) -> Callable[[ProvinceSplit], Any]:
    def run(pair: ProvinceSplit) -> Any:
        own = replace(context, scaling=scalings[pair[0]])
        setup = build_model(model, own).setup
        assert setup is not None
        return setup(own.scaling.apply(pair[1].x_train), own)

    return run


def _fit_partition(
    model: str,
    context: Context,
    options: Mapping[str, ModelOptions],
    scalings: Mapping[str, Scaling],
    start: Any,
) -> Callable[[Iterable], Iterator[Any]]:
    def run(pairs: Iterable[ProvinceSplit]) -> Iterator[Any]:
        for province, s in pairs:
            if not len(s.y_train):  # a fold by days can leave a province none: it sits out
                continue
            own = replace(context, options=options[province], scaling=scalings[province])
            spec = build_model(model, own)
            yield spec.fit(own.scaling.apply(s.x_train), s.y_train, own, start.value)

    return run


def _score(
    model: str, context: Context, scalings: Mapping[str, Scaling], fitted: Any
) -> Callable[[ProvinceSplit], tuple]:
    def run(pair: ProvinceSplit) -> tuple[str, dict[str, float], int]:
        province, s = pair
        own = replace(context, scaling=scalings[province])
        predict = build_model(model, own).predict
        prediction = predict(fitted.value, own.scaling.apply(s.x_test))
        return province, results.scores(prediction, s), len(s.y_test)

    return run


def province_splits(spark: SparkSession, data: DataOptions) -> tuple[RDD, DataOptions]:
    """RDD of nine partitions, each (province, Split) for one province, cached, and `data` with
    the split's cutoff: in the next-day setting one for all, from the provinces' rows per day
    summed by a reduce, as the federation agrees it.

    The province comes from each Parquet file's name, as `common.data` writes them.
    """
    from pyspark.sql import functions as F

    index = {province: i for i, province in enumerate(PROVINCES)}
    name = F.regexp_extract(F.col("_metadata.file_name"), r"^(.+)\.parquet$", 1)
    files = spark.read.parquet(f"{str(data.data).rstrip('/')}/*.parquet")
    columns = [*RAW_COLUMNS, *([ORACLE] if ORACLE in files.columns else [])]  # kept to score
    rows = files.select(*columns, name.alias("province")).where(F.col("province").isin(*PROVINCES))
    keyed = rows.rdd.map(lambda row: (index[row[-1]], tuple(row[:-1])))
    by_province = keyed.partitionBy(len(PROVINCES), lambda key: key)
    raws = by_province.mapPartitionsWithIndex(_raw_partition(columns)).cache()
    if data.setting == "next-day":  # the provinces' counts summed by reduces, as the server does
        dates = raws.mapValues(preprocess.next_day_dates).cache()
        years = dates.map(lambda pair: timesplit.year_counts(pair[1])).reduce(np.add)
        asked = timesplit.years_asked(years, data.test_fraction)
        days = dates.map(lambda pair: timesplit.day_counts(pair[1], asked)).reduce(np.add)
        data = with_cutoff(data, *timesplit.agree(years, asked, days, data.test_fraction))
        dates.unpersist()
    splits = raws.mapValues(lambda raw: split_province(raw, data)).cache()
    splits.count()  # split while the raw rows are cached, then let them go
    raws.unpersist()
    return splits, data


def province_sums(splits: RDD) -> dict[str, Arrays]:
    """Each province's sums over its training rows (a few numbers each)."""
    statistics = splits.map(
        lambda pair: (pair[0], preprocess.statistics(pair[1].x_train, pair[1].y_train))
    )
    return dict(statistics.collect())


@dataclass
class Loaded:
    """Provinces read, split and cached on the executors, with the global scaler: what every
    model's job starts from. Jobs on one session may share it (the data is read once)."""

    splits: RDD
    scaling: Scaling
    train_rows: dict[str, int]
    seconds: float
    data: DataOptions  # with the split's agreed cutoff
    # Each province's scaler from its own rows alone, for `--scaling province`.
    own_scaling: dict[str, Scaling] = field(default_factory=dict)

    def release(self) -> None:
        self.splits.unpersist()


def load(spark: SparkSession, data: DataOptions) -> Loaded:
    """Read and split every province (`data.data` must name files Spark can read)."""
    started = time.perf_counter()
    splits, data = province_splits(spark, data)  # reads, shuffles and splits
    sums = province_sums(splits)
    scaling = Scaling.from_sums(data.features, sums.values(), data.forecast)  # the federation's
    own = {p: Scaling.from_sums(data.features, [s], data.forecast) for p, s in sums.items()}
    train_rows = dict(splits.map(lambda pair: (pair[0], len(pair[1].y_train))).collect())
    return Loaded(splits, scaling, train_rows, time.perf_counter() - started, data, own)


def train_partitions(
    spark: SparkSession, loaded: Loaded, model: str, context: Context, scaling: str = "global"
) -> tuple[list[tuple[str, float, int]], float, float]:
    """The paper's scheme: fit per partition, merge by reduce, score on each partition.

    With `scaling` "province", each province scales its rows (training and test) by its own
    statistics, as a federation whose clients each fit their own scaler would.
    Returns the scores, the seconds of fit + reduce, and the seconds of scoring.
    """
    started = time.perf_counter()
    spec = build_model(model, context)
    options = per_province(model, context.options, loaded.train_rows)
    splits, sc = loaded.splits, spark.sparkContext
    own = scaling == "province"
    scalings = loaded.own_scaling if own else dict.fromkeys(loaded.train_rows, loaded.scaling)

    def setup_all(ctx: Context) -> Arrays:
        return splits.map(_setup_partition(model, ctx, scalings)).reduce(add_sums)

    def fit_all(ctx: Context, start: Any) -> Any:
        previous = sc.broadcast(start)
        parts = splits.mapPartitions(_fit_partition(model, ctx, options, scalings, previous))
        merged = parts.reduce(spec.merge)
        previous.destroy()
        return merged

    merged = train(spec, context, setup_all, fit_all)
    fitted = time.perf_counter()
    shared = spark.sparkContext.broadcast(merged)
    scores = splits.map(_score(model, context, scalings, shared)).collect()
    shared.destroy()
    return scores, fitted - started, time.perf_counter() - fitted


def cross_validate(
    spark: SparkSession,
    loaded: Loaded,
    model: str,
    context: Context,
    folds: int,
    embargo: int,
    scaling: str = "global",
) -> dict[str, Any]:
    """The federation's cross-validation on the partitions: fold j fits every partition on its
    training rows outside fold j, merges by the same reduce and scores on the rows inside it,
    with the scaler of all training rows, as the server's model selection does."""
    data = loaded.data
    by_time = data.folds_by_time(embargo)
    scored = []
    for fold in range(folds):
        parts = loaded.splits.mapValues(
            lambda s, fold=fold: fold_split(s, folds, fold, data.split_seed, by_time)
        )
        scores, _, _ = train_partitions(
            spark, replace(loaded, splits=parts), model, context, scaling
        )
        scored.append(results.evaluation(s for s in scores if s[2]))  # provinces with rows
    return results.cross_validated(scored, by_time)


def _rows_of(references: list[str]) -> Callable[[ProvinceSplit], Iterator[tuple]]:
    """Each row as (province, is_test, features…, target, reference forecasts…)."""

    def run(pair: ProvinceSplit) -> Iterator[tuple]:
        province, s = pair
        sides = (
            (False, s.x_train, s.y_train, s.reference_train),
            (True, s.x_test, s.y_test, s.reference_test),
        )
        for is_test, x, y, reference in sides:
            named = np.column_stack([reference[name] for name in references])
            for row, target, known in zip(x.tolist(), y.tolist(), named.tolist(), strict=True):
                yield (province, is_test, *row, target, *known)

    return run


def mllib_estimator(model: str, options: ModelOptions, label: str) -> Any:
    """Spark MLlib's own estimator for `model`, with our settings where MLlib has them.

    gbdt is GBTRegressor and rf-hist RandomForestRegressor, both histogram learners over
    `maxBins` feature bins; MLlib has no L2 leaf regularisation (gbdt's lambda) and no early
    stopping here. min child weight is a row count (squared loss: every Hessian is 1).
    """
    from pyspark.ml.regression import GBTRegressor, LinearRegression, RandomForestRegressor

    if model == "lr":
        return LinearRegression(labelCol=label)
    if model == "rf":
        return RandomForestRegressor(
            labelCol=label,
            numTrees=options.trees,
            maxDepth=min(options.max_depth or MLLIB_MAX_DEPTH, MLLIB_MAX_DEPTH),
            featureSubsetStrategy="all",
            bootstrap=True,
            seed=options.seed,
        )
    tree = options.tree_settings[model]
    shared = {
        "labelCol": label,
        "maxDepth": min(tree.max_depth, MLLIB_MAX_DEPTH),
        "maxBins": tree.max_bins,
        "minInstancesPerNode": math.ceil(tree.min_child_weight),
        "seed": tree.seed,
    }
    if model == "gbdt":
        return GBTRegressor(
            maxIter=tree.trees,
            stepSize=tree.learning_rate,
            subsamplingRate=tree.subsample,
            lossType="squared",
            **shared,
        )
    return RandomForestRegressor(
        numTrees=tree.trees,
        featureSubsetStrategy=str(tree.max_features) if tree.max_features < 1 else "all",
        bootstrap=True,
        **shared,
    )


def train_mllib(
    spark: SparkSession, splits: RDD, model: str, data: DataOptions, options: ModelOptions
) -> tuple[list[tuple[str, float, int]], float, float]:
    """MLlib's estimator on the same split rows: VectorAssembler + StandardScaler + model.

    The histogram trees learn tomorrow's change from today's close, as the federation's do;
    lr and rf learn the price, as the paper's (under --forecast change or return, all learn
    the target itself, a move already).
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StandardScaler, VectorAssembler
    from pyspark.sql import functions as F

    features = data.features
    references = sorted(splits.first()[1].reference_test)
    columns = ["province", "is_test", *features, preprocess.TARGET, *references]
    frame = spark.createDataFrame(splits.flatMap(_rows_of(references)), columns)
    moves = model in TREE_MODELS and data.forecast == quantity.DEFAULT  # else already a move
    base = F.col("close") if moves else F.lit(0.0)
    frame = frame.withColumn(LABEL, F.col(preprocess.TARGET) - base)
    train = frame.where(~F.col("is_test")).cache()
    test = frame.where(F.col("is_test"))
    train.count()  # materialise, so the fit below times training alone
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=features, outputCol="raw"),
            StandardScaler(inputCol="raw", outputCol="features", withMean=True, withStd=True),
            mllib_estimator(model, options, LABEL),
        ]
    )
    started = time.perf_counter()
    fitted = pipeline.fit(train)
    trained = time.perf_counter()
    # The test rows' predictions, scored on the driver as every other job scores them.
    predicted_price = (F.col("prediction") + base).alias("prediction")
    scored = fitted.transform(test).select(
        "province", predicted_price, preprocess.TARGET, *references
    )
    predicted = scored.toPandas()
    train.unpersist()
    scores = [
        (
            province,
            forecast.scores(
                rows["prediction"].to_numpy(),
                rows[preprocess.TARGET].to_numpy(),
                {name: rows[name].to_numpy() for name in references},
            ),
            len(rows),
        )
        for province, rows in predicted.groupby("province")
    ]
    return scores, trained - started, time.perf_counter() - trained


@contextmanager
def readable_data(data: DataOptions) -> Iterator[DataOptions]:
    """`data` with files Spark can read: the synthetic market is written to Parquet first."""
    if data.data is not None:
        yield data
        return
    folder = Path(tempfile.mkdtemp(prefix="fedstock-synthetic-"))
    try:
        yield replace(data, data=str(write_synthetic(folder, data.rows, data.seed)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(
    spark: SparkSession,
    model: str,
    data: DataOptions,
    options: ModelOptions,
    engine: str = "sklearn",
    session_seconds: float = 0.0,
    loaded: Loaded | None = None,
    scaling: str = "global",
    cv_folds: int = 0,
    cv_embargo: int = 5,
) -> dict[str, Any]:
    """One model's Spark job on a running session, reading the data unless `loaded` has it;
    with `cv_folds`, cross-validated first (sklearn engine), as the federation records it.

    `session_seconds` is the session's start-up, reported beside the job (total_seconds),
    never inside its training time; a shared `loaded` counts its reading time in every job.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "mllib" and model not in MLLIB_MODELS:
        raise ValueError(f"MLlib has no {model!r} here; it runs {', '.join(MLLIB_MODELS)}")
    if engine == "sklearn" and model in TREE_MODELS:
        raise ValueError(
            f"{model} grows one ensemble from summed histograms, so no partitions' parts merge; "
            "on Spark it runs as MLlib's (engine mllib)"
        )
    if scaling not in SCALINGS or (scaling == "province" and engine != "sklearn"):
        raise ValueError(f"scaling {scaling!r}: the sklearn engine scales global or province")
    if cv_folds and engine != "sklearn":
        raise ValueError("cross-validation runs on the sklearn engine, as the federation's")
    if loaded is None:
        with readable_data(data) as readable:
            loaded = load(spark, readable)
            try:
                return run(
                    spark,
                    model,
                    data,
                    options,
                    engine,
                    session_seconds,
                    loaded,
                    scaling,
                    cv_folds,
                    cv_embargo,
                )
            finally:
                loaded.release()
    context, started = Context(options, loaded.scaling), time.perf_counter()
    selection = None
    if cv_folds:
        selection = cross_validate(spark, loaded, model, context, cv_folds, cv_embargo, scaling)
    cv_seconds = time.perf_counter() - started
    if engine == "sklearn":
        scores, fit_seconds, score_seconds = train_partitions(
            spark, loaded, model, context, scaling
        )
    else:
        scores, fit_seconds, score_seconds = train_mllib(spark, loaded.splits, model, data, options)
    job_seconds = loaded.seconds + fit_seconds + score_seconds
    timings = {
        "session_seconds": session_seconds,
        "load_seconds": loaded.seconds,
        **({"cv_seconds": cv_seconds} if cv_folds else {}),
        "fit_seconds": fit_seconds,
        "evaluate_seconds": score_seconds,
        "job_seconds": job_seconds,
        "total_seconds": session_seconds + job_seconds,
    }
    params = {**options.describe(model), "engine": engine, "master": spark.sparkContext.master}
    params["partitions"] = loaded.splits.getNumPartitions()
    agreed = loaded.data  # read from a copy Spark can reach; the split is the one it agreed
    split = {"split_start": agreed.split_start, "split_cutoff": agreed.split_cutoff}
    params["scaling"] = scaling
    outcome = results.record(
        model,
        "spark" if engine == "sklearn" else "spark-mllib",
        replace(data, **split),
        params,
        results.evaluation(scores),
        loaded.train_rows,
        timings,
        train_seconds=fit_seconds,
    )
    return outcome if selection is None else {**outcome, "model_selection": selection}


if __name__ == "__main__":  # the command line is baselines/spark_cli.py
    from baselines.spark_cli import main

    sys.exit(main())
