"""What the live view shows: one snapshot of the run, from the coordinator and the results.

The coordinator knows who is connected and which tasks are open; the results know every
completed round. Both are read through their thread-safe copies, so the snapshot can be taken
from any thread while the round loop runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from common import forecast, quantity
from proto.fedstock.v1 import federation_pb2 as pb
from server.coordinator import ClientStatus, Coordinator, Status
from server.prometheus import Metric
from server.results import ResultsFile

CLIENT_STATES = ("connected", "training", "evaluating", "working", "idle", "dropped", "stopped")
ACTIVITIES = {pb.TASK_KIND_TRAIN: "training", pb.TASK_KIND_EVALUATE: "evaluating"}


@dataclass(frozen=True)
class RunInfo:
    """The run's settings the view shows beside its progress."""

    model: str
    strategy: str
    aggregation: str
    rounds: int
    forecast: str = quantity.DEFAULT  # the quantity every MSE shown is in


class LiveState:
    def __init__(self, coordinator: Coordinator, results: ResultsFile, run: RunInfo) -> None:
        self.coordinator = coordinator
        self.results = results
        self.run = run
        self.started = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        """The run, its clients, and the MSE of every completed round (what /api/state sends),
        with the last round's skill against the naive forecast, overall and per province."""
        status, results = self.coordinator.status(), self.results.snapshot()
        rounds = [
            {
                "round": r["round"],
                "mse": r["mse"],
                # A province's own MSE, where the privacy mode let the server have it.
                "per_client": {p: s["mse"] for p, s in r["per_client"].items() if "mse" in s},
                "seconds": r["seconds"],
                "clients": r["clients"],
            }
            for r in results["rounds"]
        ]
        completed = rounds[-1]["round"] if rounds else 0
        ended = status.stopped_at if status.stopped_at is not None else time.monotonic()
        last = rounds[-1] if rounds else None
        scored = results["rounds"][-1]["per_client"] if rounds else {}
        pooled = forecast.pooled(scored)
        return {
            "run": {
                "model": self.run.model,
                "strategy": self.run.strategy,
                "aggregation": self.run.aggregation,
                "rounds": self.run.rounds,
                "forecast": self.run.forecast,
                "mse_unit": quantity.MSE_UNITS[self.run.forecast],
                "completed": completed,
                "round": _current_round(status, completed),
                "phase": _phase(status),
                "reason": status.stop_reason,
                "elapsed_seconds": ended - self.started,
                "mse": last["mse"] if last else None,
                "naive_mse": pooled.get("naive_mse"),
                "skill": pooled.get("skill"),
                "final_mse": (results["final"] or {}).get("mse"),
            },
            "clients": [
                {
                    "province": c.province,
                    "state": client_state(c),
                    "rows": c.rows,
                    "last_seen_seconds": c.seconds_since_seen,
                    "rounds": sum(c.province in r["clients"] for r in rounds),
                    "mse": last["per_client"].get(c.province) if last else None,
                    "skill": scored.get(c.province, {}).get("skill"),
                }
                for c in status.clients
            ],
            "rounds": rounds,
            "totals": {
                "bytes_down": sum(r.get("bytes_down", 0) for r in results["rounds"]),
                "bytes_up": sum(r.get("bytes_up", 0) for r in results["rounds"]),
                "updates_rejected": status.updates_rejected,
            },
        }


def client_state(client: ClientStatus) -> str:
    """One of CLIENT_STATES: told the run is over, gone, busy with a task, or waiting."""
    if client.told_to_stop:
        return "stopped"
    if client.task_kind is not None:
        return ACTIVITIES.get(client.task_kind, "working")
    if not client.alive:
        return "dropped"
    return "idle" if client.tasks else "connected"


def _phase(status: Status) -> str:
    if status.stop_reason:
        return "failed" if status.stop_failed else "done"
    if status.open_phases:
        kind = status.open_phases[-1][1]
        name = pb.TaskKind.Name(kind).removeprefix("TASK_KIND_").lower().replace("_", " ")
        return ACTIVITIES.get(kind, name)
    return "aggregating" if any(c.tasks for c in status.clients) else "waiting for clients"


def _current_round(status: Status, completed: int) -> int:
    """The round a task is open for, else the last completed one."""
    return max([completed, *(r for r, _ in status.open_phases)])


def metrics(state: dict[str, Any]) -> list[Metric]:
    """The snapshot as Prometheus families (what /metrics sends)."""
    run, clients, totals = state["run"], state["clients"], state["totals"]
    last = state["rounds"][-1] if state["rounds"] else None
    by_state = Metric(
        "fedstock_client_state", "gauge", "1 for each province's current state, else 0"
    )
    for client in clients:
        for name in CLIENT_STATES:
            by_state.add(float(client["state"] == name), province=client["province"], state=name)
    province_mse = Metric(
        "fedstock_province_mse", "gauge", "each province's test MSE after the last round"
    )
    for province, mse in sorted((last or {"per_client": {}})["per_client"].items()):
        province_mse.add(mse, province=province)
    optional = [
        ("fedstock_global_mse", "sample-weighted test MSE after the last round", run["mse"]),
        ("fedstock_round_seconds", "wall seconds of the last round", last and last["seconds"]),
    ]
    return [
        Metric("fedstock_round", "gauge", "round in progress, else the last completed").add(
            run["round"]
        ),
        Metric("fedstock_rounds_total", "counter", "training rounds completed").add(
            run["completed"]
        ),
        Metric("fedstock_rounds_planned", "gauge", "training rounds this run will do").add(
            run["rounds"]
        ),
        Metric("fedstock_clients_connected", "gauge", "province clients seen recently").add(
            sum(c["state"] not in ("dropped", "stopped") for c in clients)
        ),
        by_state,
        *(
            Metric(name, "gauge", text, [] if value is None else [({}, value)])
            for name, text, value in optional
        ),
        province_mse,
        Metric(
            "fedstock_bytes_total",
            "counter",
            "tensor bytes of tasks (down) and of accepted updates (up)",
        )
        .add(totals["bytes_down"], direction="down")
        .add(totals["bytes_up"], direction="up"),
        Metric(
            "fedstock_updates_rejected_total", "counter", "outcomes refused by the server's checks"
        ).add(totals["updates_rejected"]),
    ]
