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
import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import uvloop

from router.portal import PortalKeys, PortalUnavailable, TunnelEvents

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
