"""The operator's endpoints of a component: ``/metrics``, ``/healthz``, ``/readyz``.

Served on ``metrics_listen`` (off by default) by the standard library's WSGI
server in one thread of its own, so that a stuck event loop is seen rather
than shared: every answer is computed on the event loop
(``run_coroutine_threadsafe``), and a loop that does not answer within
``LOOP_ANSWER_S`` makes ``/healthz`` (and the others) answer 503.

- ``/metrics``: the Prometheus text format (prometheus-client renders it);
- ``/healthz``: 200 ``{"status": "ok"}`` while the process is alive and its
  event loop answers;
- ``/readyz``: 200 ``{"status": "ready"}``, or ``"degraded"`` with what is
  degraded and why (a dependency is down but this process still serves: a
  load balancer must not drain it), or 503 with a one-line ``reason`` when
  this process cannot serve.

Resource handling: ``OpsServer`` owns its socket and thread (``close``).
Error handling: nothing a client sends ends it; a failed answer is a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST

from hostmux.config.layered import ConfigError, parse_host_port
from hostmux.log import describe, fields

log = logging.getLogger("hostmux.ops")

# Reason: a loop that cannot run one callback in this long is not serving anyone.
LOOP_ANSWER_S = 2.0
# Reason: a scrape or probe that sends nothing for this long is dropped (its thread ends).
_CLIENT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Readiness:
    """``/readyz``'s verdict: ``reason`` (one line) when not ready, else what is degraded."""

    reason: str = ""
    degraded: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.reason

    def status(self) -> str:
        if not self.ready:
            return "not ready"
        return "degraded" if self.degraded else "ready"

    def answer(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": self.status()}
        if self.reason:
            body["reason"] = self.reason
        if self.degraded:
            body["degraded"] = dict(sorted(self.degraded.items()))
        return (200 if self.ready else 503), body


@dataclass(frozen=True)
class Endpoints:
    """What the server asks the event loop for (each awaited there)."""

    metrics: Callable[[], Awaitable[bytes]]
    readiness: Callable[[], Awaitable[Readiness]]


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (see the module's rules)."""

    def __init__(self, endpoints: Endpoints, loop: asyncio.AbstractEventLoop) -> None:
        self._endpoints = endpoints
        self._loop = loop
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<OpsServer {self.address if self._server else 'closed'}>"

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = (str(part) for part in self._server.server_address[:2])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self, host: str, port: int) -> None:
        """Bind and serve in a thread; OSError when the address cannot be had."""
        server_class = _Server6 if ":" in host else _Server
        self._server = make_server(
            host, port, self._app, server_class=server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hostmux-ops", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        await asyncio.to_thread(server.shutdown)  # returns once serve_forever has
        server.server_close()

    # -- the WSGI application (runs in the server's threads) ------------------

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if path not in ("/metrics", "/healthz", "/readyz"):
            status, content_type, body = (
                404,
                "text/plain",
                b"not found: /metrics, /healthz, /readyz\n",
            )
        elif method not in ("GET", "HEAD"):
            status, content_type, body = 405, "text/plain", b"only GET and HEAD\n"
        else:
            status, content_type, body = self._answer(path)
        start_response(
            f"{status} {_REASONS[status]}",
            [("Content-Type", content_type), ("Content-Length", str(len(body))),
             ("Cache-Control", "no-store")],
        )  # fmt: skip
        return [b""] if method == "HEAD" else [body]

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        try:
            if path == "/metrics":
                return 200, CONTENT_TYPE_LATEST, self._on_loop(self._endpoints.metrics)
            if path == "/healthz":
                self._on_loop(_pong)
                return 200, "application/json", _json({"status": "ok"})
            status, body = self._on_loop(self._endpoints.readiness).answer()
            return status, "application/json", _json(body)
        except TimeoutError:
            reason = f"the event loop did not answer within {LOOP_ANSWER_S:g} s"
            return 503, "application/json", _json({"status": "not ready", "reason": reason})
        except Exception as exc:
            log.error(fields("ops_answer_failed", path=path, reason=describe(exc)))
            return 500, "application/json", _json({"status": "error", "reason": describe(exc)})

    def _on_loop(self, work: Callable[[], Awaitable[Any]]) -> Any:
        async def run() -> Any:
            return await work()

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result(timeout=LOOP_ANSWER_S)
        finally:
            future.cancel()


def start_ops_server(listen: str, endpoints: Endpoints) -> OpsServer:
    """``OpsServer`` on ``listen`` (HOST:PORT) for the running loop; a ConfigError when
    the address cannot be had. Call from the event loop."""
    server = OpsServer(endpoints, asyncio.get_running_loop())
    host, port = parse_host_port(listen, "metrics_listen")
    try:
        server.start(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return server


async def _pong() -> None:
    return None


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


_REASONS = {
    200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
    503: "Service Unavailable",
}  # fmt: skip


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up the process's end


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = _CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one every few seconds would drown the access log."""
