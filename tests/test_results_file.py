"""The results file is put together from round records encoded once each: what it holds must be
exactly what was recorded, in order, whatever happens between rounds."""

import json
import math

import pytest

from server.results import SCHEMA_VERSION, ResultsFile


def record(number):
    return {"round": number, "mse": 1.0 / number, "per_client": {"hubei": {"mse": 0.5}}}


def test_the_file_holds_every_round_in_order_beside_the_header_and_final(tmp_path):
    results = ResultsFile(tmp_path / "results.json", {"model": "lr", "config": {"rounds": 3}})
    for number in range(1, 4):
        results.add_round(record(number))
    results.update(final={"mse": 0.25})
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == {
        "schema_version": SCHEMA_VERSION,
        "model": "lr",
        "config": {"rounds": 3},
        "rounds": [record(1), record(2), record(3)],
        "final": {"mse": 0.25},
    }
    assert results.snapshot() == written


def test_a_record_that_cannot_be_written_leaves_the_file_and_later_rounds_intact(tmp_path):
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"})
    results.add_round(record(1))
    with pytest.raises(ValueError):
        results.add_round({"round": 2, "mse": math.inf})
    results.add_round(record(2))
    assert json.loads((tmp_path / "results.json").read_text())["rounds"] == [record(1), record(2)]


def test_a_resumed_run_replaces_the_rounds_and_goes_on_appending(tmp_path):
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"})
    results.add_round(record(9))
    results.update(rounds=[record(1), record(2)], statistics={"train_samples": 4})
    results.add_round(record(3))
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rounds"] == [record(1), record(2), record(3)]
    assert written["statistics"] == {"train_samples": 4}


def test_a_failure_is_recorded_over_the_last_good_file(tmp_path):
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"})
    results.add_round(record(1))
    results.data["final"] = {"mse": math.nan}  # a fault in memory, not yet written
    results.fail("the round loop failed")
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["status"] == "failed" and written["failure"] == "the round loop failed"
    assert written["rounds"] == [record(1)] and written["final"] is None
    results.add_round(record(2))
    assert len(json.loads((tmp_path / "results.json").read_text())["rounds"]) == 2
