"""The router's calls to a portal survive a portal that resets connections.

Under uvloop, as the router runs, httpx raised AttributeError (not an
httpx.HTTPError) for about two calls in three to a peer that accepts and
resets at once — which a restarting portal does. That crashed the router's
event poster and with it the whole router. These run under uvloop against a
real loopback server that resets every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import uvloop

from router.portal import PortalKeys, PortalUnavailable, TunnelEvents, sign_event_body

from .asyncio_bounded import run

ATTEMPTS = 40  # at ~2/3 per call, a missed AttributeError in 40 calls is (1/3)**40


@contextlib.contextmanager
def resetting_server() -> Iterator[int]:
    """A loopback port whose every connection is accepted, then reset (RST).

    It runs in a thread of its own, as a separate portal process would: an
    accept in the client's own event loop is ordered with the client's steps
    and never shows the race.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            conn, _ = listener.accept()  # blocking: a timeout's polling hides the race
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, name="resetting-server")
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        socket.create_connection(("127.0.0.1", port)).close()  # wakes the blocked accept
        thread.join()
        listener.close()


def run_on_uvloop(scenario: object) -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        run(scenario)  # type: ignore[arg-type]
    finally:
        asyncio.set_event_loop_policy(None)


def test_key_lookups_report_the_portal_unavailable_not_crash() -> None:
    async def scenario() -> None:
        with resetting_server() as port:
            portal = PortalKeys(
                f"http://127.0.0.1:{port}/instances/{{id}}/keys",
                timeout_s=5, ttl_s=60, negative_ttl_s=5,
            )  # fmt: skip
            try:
                for _ in range(ATTEMPTS):
                    with pytest.raises(PortalUnavailable, match="did not answer"):
                        await portal.fingerprints("inst", refresh=True)
            finally:
                await portal.aclose()

    run_on_uvloop(scenario())


class _Failures(logging.Handler):
    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.wanted = wanted
        self.reasons: list[str] = []
        self.enough = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "event=portal_event_failed" in message:
            self.reasons.append(message)
            if len(self.reasons) >= self.wanted:
                self.enough.set()


def test_the_event_poster_keeps_retrying_a_resetting_portal() -> None:
    async def scenario() -> None:
        failures = _Failures(wanted=ATTEMPTS)
        logger = logging.getLogger("hostmux")
        logger.addHandler(failures)
        try:
            with resetting_server() as port:
                events = TunnelEvents(
                    url=f"http://127.0.0.1:{port}/router-events", secret=b"s",
                    router_name="r1", retry_first_s=0.001, retry_cap_s=0.002,
                )  # fmt: skip
                events.publish("tunnel_up", "demo", "https://demo.localhost")
                poster = asyncio.create_task(events.run())
                waiter = asyncio.create_task(failures.enough.wait())
                await asyncio.wait({poster, waiter}, return_when=asyncio.FIRST_COMPLETED)
                assert not poster.done(), poster.exception()  # it retries; it did not crash
                poster.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poster
        finally:
            logger.removeHandler(failures)
        assert len(failures.reasons) >= ATTEMPTS

    run_on_uvloop(scenario())


class _PortalAnswers(http.server.BaseHTTPRequestHandler):
    """A portal that refuses kind "bad" (400), fails "flaky" once (503), takes the rest."""

    received: list[tuple[dict[str, object], str]]
    flaky_failed = False
    all_in: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        event = json.loads(body)
        type(self).received.append((event, self.headers["x-hostmux-signature"]))
        status = 204
        if event["event"] == "bad":
            status = 400
        elif event["event"] == "flaky" and not type(self).flaky_failed:
            type(self).flaky_failed, status = True, 503
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()
        if event["event"] == "last":
            type(self).all_in.set()

    def log_message(self, *args: object) -> None:
        pass


def test_events_are_v1_signed_a_4xx_drops_and_a_5xx_retries() -> None:
    handler: type[_PortalAnswers] = type(
        "Answers", (_PortalAnswers,), {"received": [], "all_in": threading.Event()}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    events = TunnelEvents(
        url=f"http://127.0.0.1:{server.server_address[1]}/router-events", secret=b"s",
        router_name="r1", retry_first_s=0.001, retry_cap_s=0.002,
    )  # fmt: skip

    async def scenario() -> None:
        events.publish("tunnel_up", "demo", "https://demo.localhost")
        events.send("bad", "demo", {})
        events.send("flaky", "demo", {"n": 1})
        events.send("last", "demo", {})
        poster = asyncio.create_task(events.run())
        try:
            async with asyncio.timeout(20):
                while events.pending():
                    await asyncio.to_thread(handler.all_in.wait, 0.5)
        finally:
            poster.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poster

    try:
        run_on_uvloop(scenario())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    kinds = [event["event"] for event, _ in handler.received]
    # The 400 is not retried (it would block the queue forever); the 503 is.
    assert kinds == ["tunnel_up", "bad", "flaky", "flaky", "last"]
    assert events.counts == {"delivered": 3, "refused": 1, "overflow": 0}
    first, signature = handler.received[0]
    assert set(first) == {"v", "event", "name", "router", "ts", "data"}
    assert (first["v"], first["name"], first["router"]) == (1, "demo", "r1")
    assert first["data"] == {"url": "https://demo.localhost"}
    body = json.dumps(first, separators=(",", ":")).encode()
    assert signature == sign_event_body(b"s", body)


def test_a_full_event_queue_drops_the_oldest_and_counts_it() -> None:
    events = TunnelEvents(url="http://127.0.0.1:9/", secret=b"s", router_name="r", max_pending=3)
    for n in range(5):
        events.send("k", f"n{n}", {})
    assert events.pending() == 3
    assert events.counts["overflow"] == 2


def test_a_tunnel_down_says_why_when_the_router_knows() -> None:
    queued: list[dict[str, object]] = []

    async def scenario() -> None:
        events = TunnelEvents(url="http://127.0.0.1:9/e", secret=b"s", router_name="r1")
        events.publish("tunnel_down", "job", "https://job.t", 0, "certificate_expired")
        events.publish("tunnel_down", "app", "https://app.t")
        queued.extend(events._queue)

    run_on_uvloop(scenario())
    assert [event["data"] for event in queued] == [
        {"url": "https://job.t", "reason": "certificate_expired"},
        {"url": "https://app.t"},
    ]
