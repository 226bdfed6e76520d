"""The server's command line maps every flag onto one typed setting, and checks them once."""

from dataclasses import fields, replace

import pytest

from client.__main__ import build_parser as build_client_parser
from client.__main__ import parse_args as client_args
from server.cli import build_parser, parse_args
from server.config import ConfigError, RunSettings


def test_every_flag_is_a_setting_and_is_recorded_under_its_name():
    flags = vars(build_parser().parse_args([]))
    record = parse_args([]).record()
    assert set(record) == set(flags)
    # The record is what was asked, in effect: 0 available clients means the quorum.
    assert record["min_available"] == record["min_clients"] == "9"
    assert record["rf_max_depth"] == "0" and record["privacy"] == "none"


def test_environment_variables_fall_back_for_flags(monkeypatch):
    monkeypatch.setenv("FEDSTOCK_ROUNDS", "7")
    monkeypatch.setenv("FEDSTOCK_MODE", "async")
    monkeypatch.setenv("FEDSTOCK_BUFFER_SIZE", "5")
    monkeypatch.setenv("FEDSTOCK_INSECURE", "1")
    config = parse_args(["--model", "lr-sgd"])
    assert config.run.rounds == 7 and config.mode == "async" and config.buffering.size == 5
    assert config.serve.insecure
    assert parse_args(["--rounds", "2"]).run.rounds == 2  # a flag wins over its variable


def test_each_setting_checks_itself():
    run = parse_args([]).run
    for bad, message in (
        (dict(rounds=0), "--rounds must be at least 1"),
        (dict(min_available=3), "--min-available cannot be below --min-clients"),
        (dict(test_fraction=1.0), "--test-fraction"),
        (dict(setting="tomorrow"), "--setting must be one of"),
    ):
        with pytest.raises(ConfigError, match=message):
            replace(run, **bad)
    assert isinstance(replace(run, rounds=1), RunSettings)


def test_the_largest_update_is_the_in_flight_budget_unless_asked_for_and_never_above_it():
    assert parse_args([]).serve.max_update_bytes == 4096 << 20
    assert parse_args(["--max-inflight-mb", "32"]).serve.max_update_bytes == 32 << 20
    serve = parse_args(["--max-inflight-mb", "32", "--max-update-mb", "10"]).serve
    assert (serve.max_update_bytes, serve.max_inflight_bytes) == (10 << 20, 32 << 20)


LEAVES = ["--rf-min-samples-leaf", "20"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "0"], "--port must be between 1 and 65535"),
        (
            ["--max-update-mb", "64", "--max-inflight-mb", "32"],
            "--max-update-mb 64 is more than --max-inflight-mb 32",
        ),
        (["--max-update-mb", "0"], "--max-update-mb and --max-inflight-mb must be positive"),
        (["--secagg-neighbours", "3"], "--secagg-neighbours must be an even number"),
        (["--strategy", "scaffold", "--compression", "int8"], "SCAFFOLD"),
        (["--shapley-permutations", "0"], "--shapley-permutations must be at least 1"),
        (["--cv-folds", "1"], "--cv-folds must be 0"),
        (["--grid", "nope=1"], "grid item"),
        (["--workers", "12"], "--workers must be at least --min-clients + 4 (13)"),
        (["--mode", "async", "--model", "rf"], "needs a model of weights"),
        (["--mode", "async", "--model", "lr-sgd", "--importance"], "end-of-run analysis"),
        (["--privacy", "secagg", "--robust-metrics"], "keeps from the server"),
        (["--privacy", "he", "--robust-metrics"], "--privacy he keeps from the server"),
        (["--privacy", "secagg", "--importance"], "neither sums nor noises"),
        (["--privacy", "he", "--personalise"], "--privacy he neither sums nor noises"),
        (["--privacy", "he", "--cv-folds", "3"], "decrypts one sum per round and phase"),
        (["--model", "rf", "--privacy", "dp-local", *LEAVES, "--dp-epsilon", "1"], "leaf noise"),
        (["--privacy", "he", "--grid", "svm-c=1,10"], "decrypts one sum per round and phase"),
        (["--privacy", "dp-local", "--contributions"], "answered by each province in the clear"),
        (["--privacy", "dp-central", "--contributions"], "dp-central neither sums nor noises"),
    ],
)
def test_a_setting_that_cannot_work_ends_the_program_with_its_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_hyperparameter_is_named_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--svm-gamma", "wide"])
    assert "'wide' is not a positive number" in capsys.readouterr().err


def test_the_client_maps_every_flag_onto_its_settings(monkeypatch, capsys):
    flags = vars(build_client_parser().parse_args(["--province", "hubei"]))
    config = client_args(["--slowdown", "2", "--province", " Hubei "])
    assert set(flags) == {f.name for f in fields(config)}
    assert config.province == "hubei" and config.slowdown == 2.0  # the canonical name
    monkeypatch.setenv("FEDSTOCK_PROVINCE", "sichuan")
    monkeypatch.setenv("FEDSTOCK_MAX_MODEL_MB", "2")
    from_env = client_args([])
    assert from_env.province == "sichuan" and from_env.max_model_bytes == 2 << 20
    for argv, message in (
        (["--province", "atlantis"], "unknown member 'atlantis'"),
        (["--province", "hubei", "--rows", "0"], "--rows must be positive"),
    ):
        with pytest.raises(SystemExit):
            client_args(argv)
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--slowdown must be a finite factor"):
        replace(config, slowdown=0.5)


def test_by_default_every_member_has_a_handler_thread_for_its_session(tmp_path):
    members = tmp_path / "members.csv"
    members.write_text("name\n" + "".join(f"member{i:03d}\n" for i in range(100)))
    assert parse_args([]).serve.workers == 32  # the paper's nine: as many as ever
    assert parse_args(["--members", str(members)]).serve.workers == 100 + 16
    assert parse_args(["--members", str(members), "--workers", "40"]).serve.workers == 40
    assert parse_args([]).record()["workers"] == "32"  # the record says what was in effect
