"""The command lines: no flag is taken for another by its prefix, and `server.localrun` stops
at once, with the server's own message, when the server cannot start."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "client", "common", "baselines", "tests")


def parser_calls() -> list[tuple[str, ast.Call]]:
    """Every `ArgumentParser(...)` and `add_parser(...)` call in the project's source."""
    calls = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                    name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                    if name in ("ArgumentParser", "add_parser"):
                        calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return calls


# Programs whose command line moved out of the module `python -m` runs: the module still runs it.
MOVED = (
    "server.ledger",
    "server.certs",
    "server.healthcheck",
    "server.localrun",
    "client.he_keys",
    "baselines.centralised",
    "baselines.spark",
    "baselines.reproduce",
)


@pytest.mark.integration
@pytest.mark.parametrize("program", MOVED)
def test_each_program_runs_as_before_from_its_module(program):
    done = run("-m", program, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {program} ")


def test_the_source_has_parsers_to_check():
    assert len(parser_calls()) >= 15


@pytest.mark.parametrize(("where", "call"), parser_calls(), ids=lambda value: str(value))
def test_every_parser_refuses_abbreviated_flags(where, call):
    """`--mode async` must never be read as `--model async`."""
    given = {keyword.arg: keyword.value for keyword in call.keywords}
    value = given.get("allow_abbrev")
    assert isinstance(value, ast.Constant) and value.value is False, (
        f"{where}: pass allow_abbrev=False"
    )


def run(*args: str) -> subprocess.CompletedProcess:
    # Generous: a loaded machine takes long to import scikit-learn.
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_an_abbreviated_flag_is_refused():
    done = run("-m", "server", "--mod", "svm", "--insecure")
    assert done.returncode == 2
    assert "unrecognized arguments: --mod svm" in done.stderr


@pytest.mark.integration
def test_localrun_stops_at_once_with_the_servers_message_when_the_server_cannot_start(tmp_path):
    out = tmp_path / "run"
    done = run("-m", "server.localrun", "--rows", "3000", "--out", str(out), "--no-such-flag")
    assert done.returncode == 1
    assert "the server exited with code 2" in done.stderr
    assert "unrecognized arguments: --no-such-flag" in done.stderr
    # The clients were stopped by localrun, not left to retry until their own patience ran out.
    for log in out.glob("*.log"):
        assert "gave up" not in log.read_text(), log.name


@pytest.mark.integration
def test_localrun_stops_at_once_with_the_servers_message_when_its_port_is_busy(tmp_path):
    """The server's flags pass through localrun, so `--port` moves it onto a port this test
    holds with a listening socket (the clients still dial the free one localrun picked)."""
    out = tmp_path / "run"
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = str(held.getsockname()[1])
        done = run("-m", "server.localrun", "--rows", "3000", "--out", str(out), "--port", port)
    assert done.returncode == 1
    assert "the server exited with code 2" in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: is the port already in use?" in done.stderr
    for log in out.glob("*.log"):
        assert "gave up" not in log.read_text(), log.name


def test_the_flag_reference_is_the_parsers_own_help():
    from tests import cli_docs

    assert cli_docs.PAGE.read_text() == cli_docs.render(), "docs/cli.md is stale: make cli-docs"
