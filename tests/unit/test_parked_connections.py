"""Idle keep-alive connections without a task (``HttpRelay`` parking, ``hostmux.relay``).

The front door on real loopback sockets, an h11 app, and raw browsers: once a
connection has its upstream and waits for its next request, its task ends;
the express path answers from callbacks, and whatever it hands back, the
keep-alive timeout, the browser's close and shutdown start a task again.
The connection count and the connection set follow it throughout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h11

from authhelper._app_connections import AppConnections
from hostmux.http1 import ClientInfo, Request
from hostmux.limits import ConnectionCounts
from hostmux.relay import (
    ConnectionSet,
    Destination,
    HttpRelay,
    RelayLimits,
    start_front_door,
)

from .asyncio_bounded import run


async def _app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers ``ok <target>`` to every request, keep-alive, bodies read."""
    conn = h11.Connection(h11.SERVER)
    target = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                target = event.target
            elif isinstance(event, h11.EndOfMessage):
                if target == b"/silent":
                    continue  # reads the request, never answers
                body = b"ok " + target
                headers = [("content-length", str(len(body)))]
                writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
                writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
    finally:
        writer.close()


class Gateway:
    """To the app over the auth helper's app connections: a stream with a ``sink``, so
    the express path answers kept-alive requests (as over the router's SSH channels)."""

    def __init__(self, port: int) -> None:
        self.app = AppConnections("127.0.0.1", port, max_idle=0)

    def route(
        self, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Destination:
        return Destination(key="app", label="app", open=self.app.open)


@dataclass
class World:
    port: int
    connections: ConnectionSet
    counts: ConnectionCounts

    def parked(self) -> int:
        return len(self.connections._parked)


@asynccontextmanager
async def world(limits: RelayLimits | None = None) -> AsyncIterator[World]:
    app = await asyncio.start_server(_app, "127.0.0.1", 0)
    connections = ConnectionSet()
    counts = ConnectionCounts(max_total=100, max_per_key=100)
    server = await start_front_door(
        "127.0.0.1", 0, gateway=Gateway(app.sockets[0].getsockname()[1]),
        limits=limits or RelayLimits(), connections=connections, counts=counts, tls=None,
        tls_handshake_timeout_s=0.0,
    )  # fmt: skip
    try:
        yield World(server.sockets[0].getsockname()[1], connections, counts)
    finally:
        server.close()
        await connections.drain(1.0)
        app.close()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> bytes:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n".encode()


async def until(condition: object) -> None:
    while not condition():  # type: ignore[operator]  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def relay_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "_serve_stream" in repr(t) or "_resume" in repr(t)]


def test_an_idle_connection_has_no_task_and_still_answers_express_and_handed_back() -> None:
    async def scenario() -> None:
        async with world() as w:
            reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
            assert await ask(reader, writer, get("/1")) == b"ok /1"  # opens the upstream
            await until(lambda: w.parked() == 1)
            assert not relay_tasks() and len(w.connections) == 1 and w.counts.total == 1
            for n in range(2, 5):  # the express path, from callbacks: still no task
                assert await ask(reader, writer, get(f"/{n}")) == f"ok /{n}".encode()
                await until(lambda: w.parked() == 1)
            # A body is handed back to a task, which parks again after it.
            post = b"POST /form HTTP/1.1\r\nHost: app.test\r\ncontent-length: 3\r\n\r\na=1"
            assert await ask(reader, writer, post) == b"ok /form"
            await until(lambda: w.parked() == 1 and not relay_tasks())
            # Two requests at once: the second waits for the first, both answered.
            writer.write(get("/p1") + get("/p2"))
            data = b""
            while data.count(b"ok /p") < 2:
                data += await reader.read(65536)
            assert data.index(b"ok /p1") < data.index(b"ok /p2")
            writer.close()
            await until(lambda: len(w.connections) == 0 and w.counts.total == 0)

    run(scenario())


def test_the_keep_alive_timeout_closes_a_parked_connection() -> None:
    async def scenario() -> None:
        async with world(RelayLimits(keepalive_timeout_s=0.2)) as w:
            reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
            assert await ask(reader, writer, get("/1")) == b"ok /1"
            await until(lambda: w.parked() == 1)
            assert await reader.read() == b""  # closed by the router, without a word
            await until(lambda: len(w.connections) == 0 and w.counts.total == 0)
            writer.close()

    run(scenario())


def test_shutdown_closes_parked_connections_at_once() -> None:
    async def scenario() -> None:
        async with world() as w:
            pairs = [await asyncio.open_connection("127.0.0.1", w.port) for _ in range(3)]
            for reader, writer in pairs:
                assert await ask(reader, writer, get("/x")) == b"ok /x"
            await until(lambda: w.parked() == 3)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await w.connections.drain(30.0)
            assert loop.time() - started < 5.0  # idle ones go now, not after the grace
            for reader, writer in pairs:
                assert await reader.read() == b""
                writer.close()
            assert len(w.connections) == 0 and w.counts.total == 0

    run(scenario())


def test_go_away_on_a_parked_relay_starts_its_task_before_returning() -> None:
    async def scenario() -> None:
        async with world() as w:
            reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
            assert await ask(reader, writer, get("/1")) == b"ok /1"
            await until(lambda: w.parked() == 1)
            relay: HttpRelay = next(iter(w.connections._parked))
            relay.go_away()
            assert not relay.parked and w.parked() == 0 and len(relay_tasks()) == 1
            assert await reader.read() == b""
            writer.close()

    run(scenario())


def test_a_response_timeout_while_parked_is_a_504() -> None:
    async def scenario() -> None:
        async with world(RelayLimits(response_timeout_s=0.3)) as w:
            reader, writer = await asyncio.open_connection("127.0.0.1", w.port)
            assert await ask(reader, writer, get("/1")) == b"ok /1"
            await until(lambda: w.parked() == 1)
            writer.write(get("/silent"))  # the express path sends it up; no task waits
            answer = await reader.read()  # the 504 page, then the close
            assert answer.startswith(b"HTTP/1.1 504 "), answer[:200]
            await until(lambda: len(w.connections) == 0 and w.counts.total == 0)
            writer.close()

    run(scenario())
