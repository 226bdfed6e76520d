"""Which code may depend on which: the command line stays in CLI modules, the baselines stay
independent of the server, whose programs they start as processes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "client", "common", "baselines")


def modules() -> dict[Path, ast.Module]:
    return {
        path.relative_to(ROOT): ast.parse(path.read_text(), str(path))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def is_program(path: Path) -> bool:
    """A CLI module: a package's `__main__.py` or `cli.py`, or a program's `<program>_cli.py`
    (the module `python -m` runs does the work and hands its command line over to it)."""
    return path.stem in ("__main__", "cli") or path.stem.endswith("_cli")


def test_only_cli_modules_import_argparse():
    found = modules()
    assert len(found) > 50
    assert any("argparse" in imported(tree) for path, tree in found.items() if is_program(path))
    offenders = [
        str(path)
        for path, tree in found.items()
        if "argparse" in imported(tree) and not is_program(path)
    ]
    assert offenders == []


def test_the_baselines_import_nothing_from_the_server():
    offenders = {
        str(path): sorted(n for n in imported(tree) if n == "server" or n.startswith("server."))
        for path, tree in modules().items()
        if path.parts[0] == "baselines"
    }
    assert {path: names for path, names in offenders.items() if names} == {}
