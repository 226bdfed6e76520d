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


def test_the_work_below_the_dispatch_reads_no_setting_from_the_config_map():
    """A task is parsed once on arrival (client/groups.py); the province's work and every
    client module it reaches take that parsed object, so none reads a group back from the map."""
    found = modules()
    reached, todo = set(), ["client.local"]
    while todo:
        name = todo.pop()
        if name in reached or name == "client.groups":
            continue
        reached.add(name)
        tree = found[Path(*name.split(".")).with_suffix(".py")]
        todo.extend(m for m in imported(tree) if m.startswith("client."))
        todo.extend(  # `from client import analysis`
            f"client.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "client"
            for alias in node.names
        )
    assert {"client.privacy", "client.trainers", "client.analysis", "client.secagg"} <= reached
    for name in sorted(reached):
        tree = found[Path(*name.split(".")).with_suffix(".py")]
        reads = [
            f"{name}:{node.lineno} {node.func.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("from_config", "sent", "from_mapping")
        ]
        assert not reads, reads
        assert "common.wire" not in imported(tree), f"{name} takes the config map"
