"""Files a server wrote before the one round loop: its checkpoint resumes, its ledger is refused.

tests/fixtures/before-one-loop/ holds what `python -m server --model lr --rounds 3` at the commit
before the task channel (453a5fc) left behind when it was killed after round 2: checkpoint.npz,
ledger.jsonl and results.json (the results path in its config rewritten to runs/demo). Its
ledger's entries are unsigned, as ledgers were then.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from server.ledger import LedgerError, read_verified, verify
from server.ledger_cli import main as ledger_main
from server.results import SCHEMA_VERSION
from tests.in_memory import run

OLD = Path(__file__).resolve().parent / "fixtures" / "before-one-loop"
FLAGS = ["--model", "lr", "--rounds", "3", "--round-timeout", "30", "--join-timeout", "5"]
UNSIGNED = "entry 1 (line 1) is unsigned (a ledger written before entries were signed"


def old_run(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        shutil.copy(OLD / name, folder / name)
    return folder


def test_an_old_ledger_is_refused_as_unsigned_by_the_check(tmp_path, capsys):
    with pytest.raises(LedgerError, match=re.escape(UNSIGNED)):
        verify(OLD / "ledger.jsonl")
    assert ledger_main(["verify", str(OLD / "ledger.jsonl")]) == 1
    assert UNSIGNED in capsys.readouterr().err


def test_a_run_with_an_old_ledger_is_not_resumed_and_its_checkpoint_and_ledger_are_kept(tmp_path):
    folder = old_run(tmp_path / "old", "checkpoint.npz", "ledger.jsonl", "results.json")
    with pytest.raises(LedgerError, match=re.escape(UNSIGNED)) as refused:
        run(folder, *FLAGS)
    assert str(refused.value).startswith(f"{folder / 'ledger.jsonl'}: ")
    assert "move it aside to resume from the checkpoint" in str(refused.value)
    # The refusal comes before anything is written: the three files are as they were.
    for name in ("checkpoint.npz", "ledger.jsonl", "results.json"):
        assert (folder / name).read_bytes() == (OLD / name).read_bytes(), name


def test_an_old_checkpoint_resumes_after_its_round_to_the_end(tmp_path):
    """With the unsigned ledger moved aside, the run goes on from round 3; the new ledger
    starts with the checkpoint's own entry for round 2, which it carries."""
    folder = old_run(tmp_path / "old", "checkpoint.npz", "results.json")
    before = json.loads((OLD / "results.json").read_text())
    results = run(folder, *FLAGS)
    assert results["schema_version"] == SCHEMA_VERSION
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert results["rounds"][:2] == before["rounds"]
    assert results["statistics"] == before["statistics"]
    assert results["final"]["clients"] == 9
    ledger = read_verified(folder / "ledger.jsonl")
    assert [e["round"] for e in ledger] == [2, 3]
    assert ledger[-1]["hash"] == results["final"]["ledger_head"]
    assert not (folder / "checkpoint.npz").exists()
