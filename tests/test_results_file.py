"""The results file is put together from round records encoded once each: what it holds must be
exactly what was recorded, in order, whatever happens between rounds."""

import json
import math

import pytest

from server.results import SCHEMA_VERSION, ResultsFile, read_rounds


def record(number):
    return {"round": number, "mse": 1.0 / number, "per_client": {"hubei": {"mse": 0.5}}}


def test_the_file_holds_every_round_in_order_beside_the_header_and_final(tmp_path):
    results = ResultsFile(
        tmp_path / "results.json", {"model": "lr", "config": {"rounds": 3}}, rewrite_seconds=0
    )
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
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"}, rewrite_seconds=0)
    results.add_round(record(1))
    with pytest.raises(ValueError):
        results.add_round({"round": 2, "mse": math.inf})
    results.add_round(record(2))
    assert json.loads((tmp_path / "results.json").read_text())["rounds"] == [record(1), record(2)]


def test_a_resumed_run_replaces_the_rounds_and_goes_on_appending(tmp_path):
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"}, rewrite_seconds=0)
    results.add_round(record(9))
    results.update(rounds=[record(1), record(2)], statistics={"train_samples": 4})
    results.add_round(record(3))
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rounds"] == [record(1), record(2), record(3)]
    assert written["statistics"] == {"train_samples": 4}


def test_a_failure_is_recorded_over_the_last_good_file(tmp_path):
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"}, rewrite_seconds=0)
    results.add_round(record(1))
    results.data["final"] = {"mse": math.nan}  # a fault in memory, not yet written
    results.fail("the round loop failed")
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["status"] == "failed" and written["failure"] == "the round loop failed"
    assert written["rounds"] == [record(1)] and written["final"] is None
    results.add_round(record(2))
    assert len(json.loads((tmp_path / "results.json").read_text())["rounds"]) == 2


def test_the_file_is_rewritten_at_most_once_a_period_and_the_log_holds_every_round(tmp_path):
    """The results file, which grows with the run, lags the rounds log by at most
    `rewrite_seconds` of the run's clock; any other field written brings it up to date."""
    now = [0.0]
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"}, 1.0, lambda: now[0])
    for number in range(1, 5):
        now[0] += 0.4
        results.add_round(record(number))

    def on_disk():
        return [r["round"] for r in json.loads((tmp_path / "results.json").read_text())["rounds"]]

    assert on_disk() == [1, 2, 3]  # rewritten at 1.2 s, not at 0.4 and 0.8, nor yet at 1.6
    assert read_rounds(tmp_path / "rounds.jsonl", through=4) == [record(n) for n in range(1, 5)]
    assert [r["round"] for r in results.snapshot()["rounds"]] == [1, 2, 3, 4]
    results.update(final={"mse": 0.25})
    assert on_disk() == [1, 2, 3, 4]


def test_reading_the_log_stops_at_the_checkpoints_round_and_leaves_out_a_cut_off_line(
    tmp_path, caplog
):
    log = tmp_path / "rounds.jsonl"
    whole = b"".join(json.dumps(record(n)).encode() + b"\n" for n in (1, 2, 3))
    log.write_bytes(whole + b'{"round": 4, "ms')
    assert read_rounds(log, through=2) == [record(1), record(2)]
    assert read_rounds(log, through=9) == [record(1), record(2), record(3)]
    assert "its last line was cut off mid-write; it is left out" in caplog.text


def test_a_log_damaged_before_its_last_line_is_refused_with_the_line(tmp_path):
    log = tmp_path / "rounds.jsonl"
    log.write_bytes(b'{"round": 1}\nnot json\n{"round": 3}\n')
    with pytest.raises(ValueError, match=r"rounds.jsonl line 2 is not a JSON record"):
        read_rounds(log, through=3)


def test_the_rounds_are_copied_from_the_log_whatever_the_piece_size_and_only_whole_ones(
    tmp_path, monkeypatch
):
    """The server keeps no copy of the rounds: the file is put together from the log, piece by
    piece, and only as far as its whole records go (a round being appended is left for later)."""
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"}, rewrite_seconds=0)
    for number in range(1, 6):
        results.add_round(record(number))
    for piece in (1, 2, 7, 1 << 20):
        monkeypatch.setattr("server.results.COPY_BYTES", piece)
        results.update(final={"mse": piece})
        written = json.loads((tmp_path / "results.json").read_text())
        assert written["rounds"] == [record(n) for n in range(1, 6)]
        assert written["final"] == {"mse": piece}
    with (tmp_path / "rounds.jsonl").open("ab") as log:
        log.write(b'{"round": 6, "ms')  # an append under way
    assert [r["round"] for r in results.snapshot()["rounds"]] == [1, 2, 3, 4, 5]


def test_a_run_without_rounds_has_an_empty_list(tmp_path):
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"}, rewrite_seconds=0)
    assert json.loads((tmp_path / "results.json").read_text())["rounds"] == []
    results.update(rounds=[])
    assert results.snapshot()["rounds"] == []


def test_the_rounds_are_read_back_one_at_a_time_as_far_as_they_were_logged(tmp_path):
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"}, rewrite_seconds=0)
    for number in range(1, 4):
        results.add_round(record(number))
    with (tmp_path / "rounds.jsonl").open("ab") as log:
        log.write(b'{"round": 4, "ms')  # an append under way
    assert list(results.rounds()) == [record(1), record(2), record(3)]
    results.update(rounds=[record(1)])
    assert list(results.rounds()) == [record(1)]
