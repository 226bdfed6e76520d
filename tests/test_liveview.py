"""The live view of a real federation: /metrics against the results file, and the page as
headless Chromium renders it."""

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.launch import LocalFederation, free_port
from common.provinces import PROVINCES
from server.livestate import CLIENT_STATES
from tests.test_federation import FAST

pytestmark = pytest.mark.integration

ROWS, SEED, ROUNDS = 20_000, 3, 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINDOW = (1300, 800)


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def chromium(tmp_path, *args: str) -> str:
    """Run headless Chromium to its end; what it printed."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("Chromium is missing: install Debian's chromium package (`make test` does)")
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'chromium'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        # Lets the page fetch /api/state and draw before the DOM or pixels are taken.
        "--virtual-time-budget=5000",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Elements(HTMLParser):
    """The attributes of every element of a page, and each element's text by id."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: dict[str, str] = {}
        self._open_id: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        self._open_id = attributes.get("id")

    def handle_data(self, data):
        if self._open_id:
            self.text[self._open_id] = self.text.get(self._open_id, "") + data

    def handle_endtag(self, tag):
        self._open_id = None

    def all(self, tag: str, attribute: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and attribute in a]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for_the_end(base: str, federation: LocalFederation, timeout: float) -> None:
    """Until the live view says the run has ended; the server then lingers."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert federation.server.poll() is None, "the server exited before lingering"
        try:
            if json.loads(fetch(f"{base}/api/state")[2])["run"]["phase"] in ("done", "failed"):
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError(f"the run did not end within {timeout} s")


def wait_for_line(log: Path, text: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < end, f"{log.name} never said {text!r}"
        time.sleep(0.2)


def test_live_view_of_a_federation(tmp_path):
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    linger = ["--http-port", str(http_port), "--linger", "600"]
    federation = LocalFederation(tmp_path, "lr", ROUNDS, ROWS, SEED, server_args=FAST + linger)
    federation.start()
    try:
        wait_for_the_end(base, federation, timeout=600)
        for province, client in federation.clients.items():
            assert client.wait(timeout=180) == 0, province
        results = federation.results()
        check_state(json.loads(fetch(f"{base}/api/state")[2]), results)
        check_metrics(base, results)
        check_http(base)
        check_page(tmp_path, base, results)
        wait_for_line(tmp_path / "server.log", "the live view stays up")
        federation.server.send_signal(signal.SIGINT)  # ends the lingering
        assert federation.server.wait(timeout=180) == 0
    finally:
        federation.kill()


def check_state(state: dict, results: dict) -> None:
    run = state["run"]
    assert (run["phase"], run["round"], run["completed"]) == ("done", ROUNDS, ROUNDS)
    assert (run["forecast"], run["mse_unit"]) == (results["forecast"]["quantity"], "yuan²")
    assert run["mse"] == results["rounds"][-1]["mse"] == results["final"]["mse"]
    assert run["naive_mse"] == pytest.approx(results["final"]["naive_mse"])
    assert run["skill"] == pytest.approx(results["final"]["skill"])
    skills = {c["province"]: c["skill"] for c in state["clients"]}
    assert skills == {p: s["skill"] for p, s in results["final"]["per_client"].items()}
    assert [c["province"] for c in state["clients"]] == sorted(PROVINCES)
    assert {c["state"] for c in state["clients"]} == {"stopped"}
    assert all(c["rounds"] == ROUNDS for c in state["clients"])


def check_metrics(base: str, results: dict) -> None:
    status, headers, body = fetch(f"{base}/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    found = samples(text)
    comments = {" ".join(line.split()[:3]) for line in text.splitlines() if line[0] == "#"}
    for name in {name for name, _ in found}:
        assert {f"# HELP {name}", f"# TYPE {name}"} <= comments, name
    rounds, last = results["rounds"], results["rounds"][-1]
    single = {name: value for (name, labels), value in found.items() if not labels}
    assert single == {
        "fedstock_round": ROUNDS,
        "fedstock_rounds_total": len(rounds),
        "fedstock_rounds_planned": ROUNDS,
        "fedstock_clients_connected": 0,
        "fedstock_global_mse": last["mse"],
        "fedstock_round_seconds": last["seconds"],
        "fedstock_updates_rejected_total": 0,
    }
    for province, score in last["per_client"].items():
        assert (
            found[("fedstock_province_mse", frozenset({("province", province)}))] == (score["mse"])
        )
        for state in CLIENT_STATES:
            labels = frozenset({("province", province), ("state", state)})
            assert found[("fedstock_client_state", labels)] == (state == "stopped")
    for direction in ("down", "up"):
        labels = frozenset({("direction", direction)})
        assert found[("fedstock_bytes_total", labels)] == sum(
            r[f"bytes_{direction}"] for r in rounds
        )
    assert found[("fedstock_bytes_total", frozenset({("direction", "up")}))] > 0


def check_http(base: str) -> None:
    assert fetch(f"{base}/nothing-here")[0] == 404
    status, headers, _ = fetch(f"{base}/metrics", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    status, headers, body = fetch(f"{base}/", method="HEAD")
    assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 1000
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def check_page(tmp_path, base: str, results: dict) -> None:
    page = Elements()
    page.feed(chromium(tmp_path, "--dump-dom", f"{base}/"))
    rows = {a["data-province"]: a["data-state"] for a in page.all("tr", "data-province")}
    assert rows == dict.fromkeys(PROVINCES, "stopped")
    assert page.text["round"] == f"{ROUNDS} / {ROUNDS}"
    assert page.text["phase"] == "done"
    assert page.text["forecast"] == "price (MSE in yuan²)"
    naive, shown_skill = page.text["skill"].split(" / ")
    assert float(naive) == pytest.approx(results["final"]["naive_mse"], rel=1e-3)
    assert shown_skill.startswith(f"{100 * results['final']['skill']:.2f} %")
    lines = {a["data-series"]: a["points"].split() for a in page.all("polyline", "data-series")}
    assert set(lines) == {*PROVINCES, "global"}
    assert {name: len(points) for name, points in lines.items()} == dict.fromkeys(
        lines, len(results["rounds"])
    )
    assert all(len(lines[p]) == len(set(lines[p])) for p in lines), "points must differ"

    shot = tmp_path / "live.png"
    chromium(tmp_path, f"--screenshot={shot}", f"{base}/")
    png = shot.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == WINDOW
