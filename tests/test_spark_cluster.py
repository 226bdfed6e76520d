"""The Spark baseline on a real standalone cluster: a master and two workers started as their
own processes from the pyspark installation, bound to the loopback interface. The job reads the
market from a folder every worker can read and must score exactly as under `local[*]`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from baselines.data import write_synthetic
from common.launch import free_port

pytestmark = pytest.mark.integration

ROWS, SEED = 4_000, 5
LOOPBACK = {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
SMALL_FOREST = ["--trees", "4", "--max-depth", "4"]


def spark_class() -> Path:
    import pyspark

    script = Path(pyspark.__file__).parent / "bin" / "spark-class"
    assert script.exists(), f"{script} is missing: reinstall pyspark (`make install`)"
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        pytest.fail("Spark needs a Java runtime (17 or newer): run `make java`")
    return script


@dataclass
class Cluster:
    """A standalone master and its workers, each a process with its own log."""

    folder: Path
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def spawn(self, name: str, *args: str) -> None:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        env = {**os.environ, **LOOPBACK, "SPARK_LOG_DIR": str(self.folder)}
        self.processes.append(
            subprocess.Popen(
                [str(spark_class()), *args], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        )

    def start(self, workers: int) -> None:
        self.spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port)),
        )
        for number in range(workers):
            work = self.folder / f"worker-{number}"
            work.mkdir()
            self.spawn(
                f"worker-{number}",
                "org.apache.spark.deploy.worker.Worker",
                self.url,
                *("--host", "127.0.0.1", "--cores", "1", "--memory", "1g"),
                *("--webui-port", str(free_port()), "--work-dir", str(work)),
            )

    def alive_workers(self) -> int:
        """Workers the master has registered, from its status page (0 while it is not up)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=10) as r:
                return int(json.load(r).get("aliveworkers", 0))
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return 0

    def wait_for_workers(self, count: int, patience: float = 300) -> None:
        """Poll until `count` workers registered; the bound is generous for a loaded machine."""
        end = time.monotonic() + patience
        while self.alive_workers() < count:
            for process in self.processes:
                assert process.poll() is None, f"a cluster process exited; see {self.folder}"
            assert time.monotonic() < end, f"{count} workers never registered; see {self.folder}"
            time.sleep(1)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("spark-cluster"))
    try:
        running.start(workers=2)
        running.wait_for_workers(2)
        yield running
    finally:
        running.stop()
    assert all(process.poll() is not None for process in running.processes)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """The market as Parquet files in a folder the driver and both workers read."""
    return write_synthetic(tmp_path_factory.mktemp("shared"), ROWS, SEED)


def run_job(master: str, model: str, data: Path, out: Path, *extra: str) -> dict:
    results = out / f"{model}-{'cluster' if master.startswith('spark:') else 'local'}.json"
    job = ["-m", "baselines.spark", "--master", master, "--model", model, "--data", str(data)]
    done = subprocess.run(
        [sys.executable, *job, "--driver-memory", "1g", "--results", str(results), *extra],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, **LOOPBACK},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(results.read_text())


@pytest.mark.parametrize(("model", "extra"), [("lr", []), ("rf", SMALL_FOREST)])
def test_a_standalone_cluster_scores_as_local_spark(cluster, shared, tmp_path, model, extra):
    on_cluster = run_job(cluster.url, model, shared, tmp_path, *extra)
    local = run_job("local[*]", model, shared, tmp_path, *extra)
    assert on_cluster["params"]["master"] == cluster.url
    assert on_cluster["final"]["mse"] == pytest.approx(local["final"]["mse"], rel=1e-9)
    assert on_cluster["final"]["per_client"].keys() == local["final"]["per_client"].keys()
    # The executors ran on the workers: each worker's folder holds this application's logs.
    apps = [list((cluster.folder / f"worker-{n}").glob("app-*")) for n in range(2)]
    assert all(apps), f"an executor never ran on a worker: {apps}"
