"""A whole federation on this machine: the server and one client process per province.

Used by `make demo`, the benchmarks, the baselines' reproduction and the integration tests;
every process is real and talks real gRPC over localhost, started as a person would start it
(`python -m server`, `python -m client`, `python -m server.certs`). Each process's log goes to
a file in the run folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.synthetic import DEFAULT_ROWS, DEFAULT_SEED
from common.provinces import PROVINCES

# Nine clients share two cores: one BLAS thread each keeps them from fighting over them.
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# server.__main__ returns 2 when it cannot start; clients of a server that failed later hear
# "stop" within a poll, and this bounds how long they may take (generous, for loaded machines).
SERVER_CANNOT_START = 2
CLIENT_GRACE_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalFederation:
    """Starts the processes; `wait` collects their exit codes."""

    out: Path
    model: str = "lr"
    rounds: int = 3
    rows: int = DEFAULT_ROWS
    seed: int = DEFAULT_SEED
    data: Path | None = None
    provinces: tuple[str, ...] = PROVINCES
    # A --members FILE for every process (provinces then names who of them to start).
    members_file: Path | None = None
    server_args: list[str] = field(default_factory=list)
    client_args: list[str] = field(default_factory=list)
    insecure: bool = False
    port: int = field(default_factory=free_port)
    server: subprocess.Popen | None = None
    clients: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_dir(self) -> Path:
        return self.out / "certs"

    def _security(self) -> list[str]:
        """Mutual TLS with a CA made for this run, unless the run is explicitly insecure."""
        if self.insecure:
            return ["--insecure"]
        if not (self.tls_dir / "ca.pem").exists():
            certs = ["-m", "server.certs", "--out", str(self.tls_dir), *self._members()]
            made = subprocess.run(
                [sys.executable, *certs],
                capture_output=True,
                text=True,
            )
            if made.returncode != 0:
                raise RuntimeError(f"cannot make the run's certificates: {made.stderr.strip()}")
        return ["--tls-dir", str(self.tls_dir)]

    def _members(self) -> list[str]:
        return ["--members", str(self.members_file)] if self.members_file else []

    def start_server(self, *extra: str, module: str = "server") -> None:
        """`module`: the server program (a test's variant of it, say), given `extra` flags."""
        self.out.mkdir(parents=True, exist_ok=True)
        args = [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--model",
            self.model,
            "--rounds",
            str(self.rounds),
            "--min-clients",
            str(len(self.provinces)),
            "--results",
            str(self.results_path),
            *self._security(),
            *self._members(),
            *self.server_args,
            *extra,
        ]
        self.server = self._spawn("server", ["-m", module, *args])

    def start_client(self, province: str, *extra: str, module: str = "client") -> subprocess.Popen:
        """`module`: the client program (a test's variant of it, say), given `extra` flags."""
        args = ["--province", province, "--server", self.address, *self._security()]
        args += self._members()
        args += ["--receipts", str(self.out / "receipts")]
        args += (
            ["--data", str(self.data)]
            if self.data
            else ["--rows", str(self.rows), "--seed", str(self.seed)]
        )
        process = self._spawn(province, ["-m", module, *args, *self.client_args, *extra])
        self.clients[province] = process
        return process

    def start(self) -> None:
        self.start_server()
        for province in self.provinces:
            self.start_client(province)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.out / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        env = {**os.environ, **SINGLE_THREADED, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(
            [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )

    def wait(self, timeout: float) -> dict[str, int | None]:
        """Exit codes by process name (None: still running at the timeout, then killed).

        A server that exits 2 never served (bad flags, certificates or port): its clients could
        only retry until they give up, so they are stopped at once. One that fails later has
        told its clients to stop; they get `CLIENT_GRACE_SECONDS` to hear it and exit."""
        end = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        if self.server is not None:
            codes["server"] = _wait(self.server, end)
            if codes["server"] == SERVER_CANNOT_START:
                end = time.monotonic()
            elif codes["server"] not in (0, None):
                end = min(end, time.monotonic() + CLIENT_GRACE_SECONDS)
        for name, process in self.clients.items():
            codes[name] = _wait(process, end)
        self.kill()
        return codes

    def kill(self) -> None:
        for process in [self.server, *self.clients.values()]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    def results(self) -> dict[str, Any]:
        return json.loads(self.results_path.read_text())


def _wait(process: subprocess.Popen, end: float) -> int | None:
    """The process's exit code, or None if it is still running at `end` (monotonic)."""
    try:
        return process.wait(timeout=max(0.1, end - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a process's log: what a failed process said last."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
