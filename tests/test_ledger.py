import json
import subprocess
import sys

import numpy as np
import pytest

from server.checkpoint import Checkpoint
from server.ledger import Ledger, LedgerError, read_verified


def write_ledger(path, rounds=4):
    ledger = Ledger(path)
    for r in range(1, rounds + 1):
        ledger.append(
            {
                "round": r,
                "model_digest": f"{r:064x}",
                "participants": ["hubei"],
                "metrics": {"mse": 1.0 / r},
            }
        )
    return ledger


def verify(path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "server.ledger", "verify", str(path), *extra],
        capture_output=True,
        text=True,
    )


def test_an_intact_ledger_verifies_and_continues_its_chain(tmp_path):
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, 2)
    again = Ledger(path)
    again.append({"round": 3})
    assert [e["round"] for e in read_verified(path)] == [1, 2, 3]
    done = verify(path, "--head", again.head)
    assert done.returncode == 0 and "intact, 3 entries" in done.stdout


def lines_of(path):
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda ls: [ls[0], ls[1].replace('"mse": 0.5', '"mse": 0.4'), *ls[2:]], "entry 2"),
        (lambda ls: [ls[0], *ls[2:]], "entry 2"),
        (lambda ls: [ls[0], ls[2], ls[1], ls[3]], "entry 2"),
        (lambda ls: [*ls[:3], "not json\n"], "entry 4"),
    ],
    ids=["edit", "delete", "reorder", "garbage"],
)
def test_every_tampering_is_caught_at_the_first_bad_entry(tmp_path, tamper, named):
    path = tmp_path / "ledger.jsonl"
    write_ledger(path)
    path.write_text("".join(tamper(lines_of(path))))
    with pytest.raises(LedgerError, match=named):
        read_verified(path)
    done = verify(path)
    assert done.returncode == 1 and named in done.stderr


def test_an_edit_that_recomputes_its_own_hash_still_breaks_the_next_link(tmp_path):
    path = tmp_path / "ledger.jsonl"
    write_ledger(path)
    lines = lines_of(path)
    entry = json.loads(lines[1])
    entry["metrics"]["mse"] = 0.0
    from server.ledger import entry_hash

    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(LedgerError, match="entry 3"):
        read_verified(path)


def test_entries_cut_off_the_end_are_caught_against_the_recorded_head(tmp_path):
    path = tmp_path / "ledger.jsonl"
    head = write_ledger(path).head
    path.write_text("".join(lines_of(path)[:-1]))
    assert verify(path).returncode == 0
    done = verify(path, "--head", head)
    assert done.returncode == 1 and "removed from the end" in done.stderr


def test_checkpoint_roundtrip_keeps_arrays_and_state(tmp_path):
    path = tmp_path / "checkpoint.npz"
    saved = Checkpoint(
        3,
        {"coef": np.arange(3.0), "tree.0/feature": np.arange(2)},
        np.zeros(2),
        np.ones(2),
        {"a": [1, 2]},
    )
    saved.save(path)
    loaded = Checkpoint.load(path)
    assert loaded.server_round == 3 and loaded.state == {"a": [1, 2]}
    np.testing.assert_array_equal(loaded.parameters["coef"], np.arange(3.0))
    np.testing.assert_array_equal(loaded.parameters["tree.0/feature"], np.arange(2))
    assert list(tmp_path.iterdir()) == [path]
