"""The live view's snapshot and metrics, from a real coordinator and a real results file."""

import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proto.fedstock.v1 import federation_pb2 as pb
from server.channel import gather
from server.coordinator import RECENTLY_SEEN_SECONDS, Assignment, Coordinator
from server.livestate import CLIENT_STATES, LiveState, RunInfo, metrics
from server.prometheus import Metric, render
from server.results import ResultsFile

RUN = RunInfo(model="lr", strategy="fedavg", aggregation="mean", rounds=2)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, parsed by the Prometheus project's own parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def states(live: LiveState) -> dict[str, str]:
    return {c["province"]: c["state"] for c in live.snapshot()["clients"]}


def wait_until(check, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "the condition did not come true in time"
        time.sleep(0.01)


def test_render_escapes_labels_and_help():
    text = render([Metric("x", "gauge", 'a \\ b\nc "d"').add(1.5, province='he said "hi"\\\n')])
    assert text.splitlines() == [
        '# HELP x a \\\\ b\\nc "d"',
        "# TYPE x gauge",
        'x{province="he said \\"hi\\"\\\\\\n"} 1.5',
    ]
    assert samples(text) == {("x", frozenset({("province", 'he said "hi"\\\n')})): 1.5}


def test_metric_kinds_are_checked():
    with pytest.raises(ValueError, match="kind"):
        Metric("x", "histogram", "")
    with pytest.raises(ValueError, match="_total"):
        Metric("x_count", "counter", "")


def test_client_states_follow_the_coordinator(tmp_path):
    coordinator = Coordinator(poll_seconds=0.2)
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"})
    live = LiveState(coordinator, results, RUN)
    assert live.snapshot()["run"]["phase"] == "waiting for clients"

    hubei = coordinator.join("hubei", 100, "test")
    coordinator.join("fujian", 50, "test")
    assert states(live) == {"hubei": "connected", "fujian": "connected"}

    phase = threading.Thread(
        target=gather,
        args=(
            coordinator,
            1,
            pb.TASK_KIND_TRAIN,
            {"hubei": Assignment(pb.Task(), None)},
            lambda r: r,
            30.0,
        ),
    )
    phase.start()
    wait_until(lambda: states(live)["hubei"] == "training")
    run = live.snapshot()["run"]
    assert (run["phase"], run["round"], run["completed"]) == ("training", 1, 0)
    task = coordinator.next_assignment(hubei, lambda: True).task
    coordinator.refuse(task.task_id, "update refused: not finite")
    phase.join()
    assert states(live) == {"hubei": "idle", "fujian": "connected"}
    assert live.snapshot()["totals"]["updates_rejected"] == 1

    coordinator._clients["fujian"].last_seen -= RECENTLY_SEEN_SECONDS + 1
    assert states(live)["fujian"] == "dropped"
    coordinator.stop("training is complete", failed=False, grace_seconds=0)
    assert coordinator.next_assignment(hubei, lambda: True).task.kind == pb.TASK_KIND_STOP
    assert states(live)["hubei"] == "stopped"
    assert live.snapshot()["run"]["phase"] == "done"


def test_metrics_match_the_results(tmp_path):
    coordinator = Coordinator(poll_seconds=0.2)
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"})
    live = LiveState(coordinator, results, RUN)
    coordinator.join("hubei", 100, "test")
    record = {
        "round": 1,
        "clients": ["hubei"],
        "mse": 0.25,
        "per_client": {"hubei": {"mse": 0.25, "n_test": 20}},
        "seconds": 1.5,
        "bytes_down": 800,
        "bytes_up": 400,
    }
    results.add_round(record)
    found = samples(render(metrics(live.snapshot())))
    assert found[("fedstock_rounds_total", frozenset())] == 1
    assert found[("fedstock_rounds_planned", frozenset())] == 2
    assert found[("fedstock_global_mse", frozenset())] == 0.25
    assert found[("fedstock_province_mse", frozenset({("province", "hubei")}))] == 0.25
    assert found[("fedstock_round_seconds", frozenset())] == 1.5
    assert found[("fedstock_bytes_total", frozenset({("direction", "down")}))] == 800
    assert found[("fedstock_bytes_total", frozenset({("direction", "up")}))] == 400
    assert found[("fedstock_clients_connected", frozenset())] == 1
    for state in CLIENT_STATES:
        labels = frozenset({("province", "hubei"), ("state", state)})
        assert found[("fedstock_client_state", labels)] == (state == "connected")
    assert live.snapshot()["clients"][0]["rounds"] == 1


def test_a_round_whose_province_scores_are_hidden_shows_the_federations_alone(tmp_path):
    coordinator = Coordinator(poll_seconds=0.2)
    results = ResultsFile(tmp_path / "results.json", {"model": "lr"})
    live = LiveState(coordinator, results, RUN)
    hidden = {"n_test": 20, "hidden": "hidden (encrypted)"}
    record = {"round": 1, "clients": ["hubei"], "mse": 0.25, "seconds": 1.5}
    results.add_round({**record, "per_client": {"hubei": hidden}, "bytes_down": 8, "bytes_up": 4})
    assert live.snapshot()["rounds"][0]["per_client"] == {}
    found = samples(render(metrics(live.snapshot())))
    assert found[("fedstock_global_mse", frozenset())] == 0.25
    assert not any(name == "fedstock_province_mse" for name, _ in found)


@pytest.mark.parametrize(
    ("quantity", "unit"), [("price", "yuan²"), ("return", "squared return (no unit)")]
)
def test_the_snapshot_names_the_quantity_and_unit_its_mses_are_in(tmp_path, quantity, unit):
    run = RunInfo(model="lr", strategy="fedavg", aggregation="mean", rounds=1, forecast=quantity)
    coordinator = Coordinator(poll_seconds=0.2)
    live = LiveState(coordinator, ResultsFile(tmp_path / "results.json", {"model": "lr"}), run)
    shown = live.snapshot()["run"]
    assert (shown["forecast"], shown["mse_unit"]) == (quantity, unit)
