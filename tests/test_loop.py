"""The round loop over the in-memory channel: the real server run, no process, no network.

Slowness, deadlines and absences are set by construction on the channel's own clock, so what
these tests see does not depend on how loaded the machine is.
"""

import json
import math

import numpy as np
import pytest

from client.local import LocalWork, Outcome
from common.data import synthesize_province
from common.provinces import PROVINCES
from proto.fedstock.v1 import federation_pb2 as pb
from server.ledger import LedgerError, read_verified
from server.memory import MemoryChannel
from server.recorder import ResumeError
from server.results import SCHEMA_VERSION, read_rounds
from server.rounds import FederationError
from tests.in_memory import ROWS, SEED, channel, provinces, run

QUICK = ["--rounds", "3", "--round-timeout", "30", "--join-timeout", "5"]


def never(province):
    """A channel clock on which `province` never answers a training task."""

    def seconds(p, task):
        return math.inf if p == province and task.kind == pb.TASK_KIND_TRAIN else 1.0

    return seconds


def test_nine_provinces_federate_lr_to_the_end_and_every_file_agrees(tmp_path):
    results = run(tmp_path, "--model", "lr", *QUICK)
    assert results["schema_version"] == SCHEMA_VERSION == 1
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert all(r["clients"] == sorted(PROVINCES) for r in results["rounds"])
    final = results["final"]
    assert final["clients"] == 9 and final["mse"] == results["rounds"][-1]["mse"]
    assert results["statistics"]["train_samples"].keys() == set(PROVINCES)
    ledger = read_verified(tmp_path / "ledger.jsonl")
    assert [e["round"] for e in ledger] == [1, 2, 3]
    assert ledger[-1]["hash"] == final["ledger_head"]
    assert (tmp_path / "model.npz").exists() and not (tmp_path / "checkpoint.npz").exists()


def test_the_same_run_gives_the_same_model(tmp_path):
    flags = ["--model", "lr-sgd", *QUICK]
    first = run(tmp_path / "a", *flags)
    second = run(tmp_path / "b", *flags)
    assert first["final"]["mse"] == second["final"]["mse"]
    a, b = np.load(tmp_path / "a" / "model.npz"), np.load(tmp_path / "b" / "model.npz")
    assert all(np.array_equal(a[name], b[name]) for name in a.files)


def test_a_province_that_never_answers_is_dropped_at_the_deadline(tmp_path):
    over = channel(never("hubei"))
    results = run(tmp_path, "--model", "lr-sgd", "--min-clients", "8", *QUICK, over=over)
    for record in results["rounds"]:
        assert "hubei" not in record["clients"] and len(record["clients"]) == 8
        [failure] = record["failures"]
        assert failure["province"] == "hubei" and "30 s deadline" in failure["reason"]
    # It still scores the model it did not help to train.
    assert results["final"]["clients"] == 9


def test_a_province_gone_between_rounds_is_recorded_absent_not_failed(tmp_path, caplog):
    over = channel()

    def hubei_leaves_in_round_1s_evaluation(province, task):
        if province == "hubei" and task.round == 1 and task.kind == pb.TASK_KIND_EVALUATE:
            over.absent.add("hubei")  # it never answers, and is not connected from then on
        return 1.0

    over.seconds = hubei_leaves_in_round_1s_evaluation
    caplog.set_level("INFO", logger="fedstock.server")
    results = run(tmp_path, "--model", "lr-sgd", "--min-clients", "8", *QUICK, over=over)
    first, *later = results["rounds"]
    assert first["absent"] == [] and [f["province"] for f in first["failures"]] == ["hubei"]
    for record in later:
        assert record["absent"] == ["hubei"] and record["failures"] == []
        assert "hubei" not in record["clients"] and len(record["clients"]) == 8
    assert [e["absent"] for e in read_verified(tmp_path / "ledger.jsonl")] == [
        [],
        *(["hubei"] for _ in later),
    ]
    assert "round 3/3: 8 clients trained" in caplog.text and "absent: hubei" in caplog.text


def test_a_round_short_of_its_quorum_keeps_the_model(tmp_path):
    def hubei_misses_round_2(province, task):
        late = province == "hubei" and task.round == 2 and task.kind == pb.TASK_KIND_TRAIN
        return math.inf if late else 1.0

    results = run(tmp_path, "--model", "lr-sgd", *QUICK, over=channel(hubei_misses_round_2))
    first, second, third = results["rounds"]
    assert second["clients"] == sorted(set(PROVINCES) - {"hubei"})
    assert len(first["clients"]) == len(third["clients"]) == 9
    digests = [e["model_digest"] for e in read_verified(tmp_path / "ledger.jsonl")]
    assert digests[0] == digests[1] != digests[2]
    assert second["mse"] == first["mse"]


def test_no_round_with_its_quorum_is_a_clear_error(tmp_path):
    with pytest.raises(FederationError, match="no round produced an evaluated model"):
        run(tmp_path, "--model", "lr-sgd", *QUICK, over=channel(never("hubei")))


def test_too_few_provinces_to_start_is_a_clear_error(tmp_path):
    over = channel()
    over.absent = {"hubei", "fujian"}
    with pytest.raises(FederationError, match="only 7 of the 9 required clients"):
        run(tmp_path, "--model", "lr", *QUICK, over=over)


class Poisoned(LocalWork):
    """A province whose training update is not finite."""

    def train(self, groups, scaler, parameters):
        outcome = super().train(groups, scaler, parameters)
        return Outcome(
            outcome.num_examples,
            outcome.metrics,
            {k: np.full_like(v, np.nan) for k, v in outcome.arrays.items()},
        )


def test_a_malformed_update_is_refused_and_never_applied(tmp_path):
    works = provinces()
    works["hubei"] = Poisoned(synthesize_province("hubei", ROWS, SEED))
    over = MemoryChannel(works)
    results = run(tmp_path, "--model", "lr-sgd", "--min-clients", "8", *QUICK, over=over)
    assert over.updates_rejected == 3
    for record in results["rounds"]:
        assert "hubei" not in record["clients"]
        assert "update refused" in record["failures"][0]["reason"]
    assert math.isfinite(results["final"]["mse"])


class Interrupted(Exception):
    pass


def stop_in_round_3(province, task):
    """A channel clock on which the run stops in round 3's training, as a killed server."""
    if task.round == 3 and task.kind == pb.TASK_KIND_TRAIN:
        raise Interrupted
    return 1.0


def test_a_run_stopped_after_a_round_resumes_to_the_uninterrupted_model(tmp_path):
    flags = ["--model", "lr-sgd", "--strategy", "fedavgm", *QUICK]
    run(tmp_path / "whole", *flags)

    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", *flags, over=channel(stop_in_round_3))
    assert (tmp_path / "resumed" / "checkpoint.npz").exists()
    results = run(tmp_path / "resumed", *flags)
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    ledger = read_verified(tmp_path / "resumed" / "ledger.jsonl")
    assert [e["round"] for e in ledger] == [1, 2, 3]
    whole = np.load(tmp_path / "whole" / "model.npz")
    resumed = np.load(tmp_path / "resumed" / "model.npz")
    for name in whole.files:
        np.testing.assert_allclose(resumed[name], whole[name], rtol=1e-9)
    whole_results = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert results["final"]["mse"] == pytest.approx(whole_results["final"]["mse"], rel=1e-9)


def test_a_resume_leaves_out_a_rounds_log_line_cut_off_mid_write_with_a_warning(tmp_path, caplog):
    """A server killed while appending a round's record leaves the line cut short: the resume
    says so and goes on from its checkpoint's round, no traceback."""
    flags = ["--model", "lr-sgd", *QUICK]
    with pytest.raises(Interrupted):
        run(tmp_path, *flags, over=channel(stop_in_round_3))
    with (tmp_path / "rounds.jsonl").open("ab") as log:
        log.write(b'{"round": 3, "mse": 0.')
    results = run(tmp_path, *flags)
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert "its last line was cut off mid-write; it is left out" in caplog.text
    assert [e["round"] for e in read_verified(tmp_path / "ledger.jsonl")] == [1, 2, 3]
    # The log stays, whole again: the results are put together from it.
    assert read_rounds(tmp_path / "rounds.jsonl", through=3) == results["rounds"]


def test_a_ledger_entry_lost_before_its_flush_is_written_back_from_the_checkpoint(tmp_path):
    """The ledger is flushed behind the round, so a crash of the machine can take its last
    entry; the checkpoint, flushed first, carries it, and the resume writes it back as it was:
    the receipts the provinces were given for it still hold."""
    flags = ["--model", "lr-sgd", *QUICK]
    with pytest.raises(Interrupted):
        run(tmp_path, *flags, over=channel(stop_in_round_3))
    ledger = tmp_path / "ledger.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    assert len(lines) == 2
    ledger.write_text(lines[0])
    run(tmp_path, *flags)
    entries = read_verified(ledger)
    assert [e["round"] for e in entries] == [1, 2, 3]
    assert json.dumps(entries[1], sort_keys=True) + "\n" == lines[1]


def reorder_first_entries(folder):
    lines = (folder / "ledger.jsonl").read_text().splitlines(keepends=True)
    (folder / "ledger.jsonl").write_text("".join([lines[1], lines[0], *lines[2:]]))


@pytest.mark.parametrize(
    ("change", "flags", "refused", "why"),
    [
        (reorder_first_entries, [], LedgerError, "out of order"),
        (lambda folder: None, ["--strategy", "fedadam"], ValueError, "another --strategy"),
        (lambda folder: None, ["--forecast", "change"], ResumeError, r"forecast price\)"),
    ],
    ids=["tampered-ledger", "another-strategy", "another-forecast"],
)
def test_a_refused_resume_writes_nothing(tmp_path, change, flags, refused, why):
    """A run stopped in round 3, restarted with a ledger that fails its check, with a strategy
    the checkpoint's state is not for, or forecasting another quantity: refused with the
    reason before any file of the interrupted run is written, so it can still be resumed as it
    was."""
    resume = ["--model", "lr-sgd", "--strategy", "fedavgm", *QUICK]

    with pytest.raises(Interrupted):
        run(tmp_path, *resume, over=channel(stop_in_round_3))
    change(tmp_path)
    files = ("results.json", "rounds.jsonl", "checkpoint.npz", "ledger.jsonl")
    kept = {name: (tmp_path / name).read_bytes() for name in files}
    with pytest.raises(refused, match=why):
        run(tmp_path, *resume, *flags)
    assert {name: (tmp_path / name).read_bytes() for name in files} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
