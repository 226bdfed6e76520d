"""The command lines: no flag is taken for another by its prefix, and `server.localrun` stops
at once, with the server's own message, when the server cannot start."""

from __future__ import annotations

import ast
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


def is_command_line(path: Path) -> bool:
    """A program's command line: `__main__.py`, `cli.py` or `<program>_cli.py`."""
    return path.stem in ("__main__", "cli") or path.stem.endswith("_cli")


def imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return True
    return False


def test_only_command_line_modules_import_argparse():
    """Domain modules receive typed settings; flags are parsed in the CLI modules alone."""
    modules = [p for package in PACKAGES[:-1] for p in sorted((ROOT / package).rglob("*.py"))]
    assert any(imports_argparse(p) for p in modules if is_command_line(p))  # the check can see
    offenders = [str(p.relative_to(ROOT)) for p in modules if not is_command_line(p)]
    assert [p for p in offenders if imports_argparse(ROOT / p)] == []


def test_the_baselines_import_nothing_from_the_server():
    for path in sorted((ROOT / "baselines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n == "server" or n.startswith("server.") for n in names), path


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


def test_the_flag_reference_is_the_parsers_own_help():
    from tests import cli_docs

    assert cli_docs.PAGE.read_text() == cli_docs.render(), "docs/cli.md is stale: make cli-docs"
