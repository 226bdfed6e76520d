"""The live view's HTTP server: the page, its JSON and Prometheus metrics, read-only.

Runs in the aggregation server's process, in daemon threads beside the gRPC server. It is
plaintext and unauthenticated, and only shows what the run's results file will hold anyway,
so it binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from server.livestate import LiveState, metrics
from server.prometheus import CONTENT_TYPE, render

log = logging.getLogger("fedstock.server")

PAGE = resources.files("server").joinpath("liveview.html").read_bytes()
# The page needs nothing but itself and /api/state: no other origin, no plug-ins, no frames.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class LiveView:
    """Serves `/`, `/api/state` and `/metrics` for `state` on host:port until closed."""

    def __init__(self, state: LiveState, host: str, port: int) -> None:
        handler = type("Handler", (LiveHandler,), {"state": state})
        host = host.strip("[]")
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host, port), handler)
        except OSError as error:
            where = _address(host, port)
            raise OSError(f"the live view cannot listen on {where}: {error}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="live-view", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()
        where = _address(*self._server.server_address[:2])
        log.info("live view on http://%s/ (metrics at /metrics)", where)

    def linger(self, seconds: float) -> None:
        """Keep serving after the run, so its end can still be looked at; Ctrl-C ends it."""
        if seconds <= 0:
            return
        log.info("the live view stays up for %g s (Ctrl-C ends it)", seconds)
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            log.info("live view ended")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class LiveHandler(BaseHTTPRequestHandler):
    state: LiveState
    server_version = "fedstock-live"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse_method(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", "text/plain", True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(HTTPStatus.OK, PAGE, "text/html; charset=utf-8", body)
        elif path == "/api/state":
            state = json.dumps(self.state.snapshot()).encode()
            self._send(HTTPStatus.OK, state, "application/json", body)
        elif path == "/metrics":
            text = render(metrics(self.state.snapshot())).encode()
            self._send(HTTPStatus.OK, text, CONTENT_TYPE, body)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", body)

    def _send(self, status: HTTPStatus, content: bytes, kind: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        if kind.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_POLICY)
        self.end_headers()
        if body:
            self.wfile.write(content)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("live view: " + format, *args)
