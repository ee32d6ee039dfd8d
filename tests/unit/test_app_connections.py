"""The helper's pool of idle connections to the app (``authhelper._app_connections``).

Real loopback sockets on port 0: an h11 app that counts its connections and
can misbehave on purpose, the relay behind the helper's front-door handler,
and browsers that each send one request on a connection of their own. Waits
are for conditions, under the scenario's deadline; nothing sleeps for time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11

from authhelper._app_connections import AppConnections
from authhelper._config import load_config
from authhelper._session import new_cookie_key
from hostmux.http1 import ClientInfo, Request
from hostmux.limits import ConnectionCounts
from hostmux.relay import (
    ConnectionSet,
    Destination,
    RelayLimits,
    RequestRecord,
    connection_handler,
    start_front_door,
)

from .asyncio_bounded import run

HOST = b"app.test"


@dataclass
class App:
    """An HTTP/1.1 app on loopback: answers ``ok <connection number>``, keep-alive."""

    port: int = 0
    opened: int = 0
    closed_by_peer: int = 0  # connections the helper closed
    hang_up: set[tuple[int, int]] = field(default_factory=set)  # (connection, request) to drop
    close_after: set[int] = field(default_factory=set)  # connections it closes after 1 answer
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    writers: dict[int, asyncio.StreamWriter] = field(default_factory=dict)  # by connection

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        number = self.opened
        self.writers[number] = writer
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        self.closed_by_peer += 1
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    served += 1
                    if (number, served) in self.hang_up:
                        return  # closes without answering
                elif isinstance(event, h11.EndOfMessage):
                    body = f"ok {number}".encode()
                    headers = [("content-length", str(len(body)))]
                    writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
                    writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    if number in self.close_after:
                        return
                    conn.start_next_cycle()
        finally:
            writer.close()


class Gateway:
    def __init__(self, app: AppConnections) -> None:
        self.app = app

    def route(
        self, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Destination:
        return Destination(key="app", label="app", open=self.app.open, pool=self.app, user="alice")


@dataclass
class World:
    app: App
    pool: AppConnections
    helper_port: int
    records: list[RequestRecord]


@asynccontextmanager
async def world(
    *, max_idle: int = 4, idle_timeout_s: float = 30.0, app: App | None = None
) -> AsyncIterator[World]:
    app = app or App()
    app_server = await asyncio.start_server(app.serve, "127.0.0.1", 0)
    app.port = app_server.sockets[0].getsockname()[1]
    records: list[RequestRecord] = []
    pool = AppConnections("127.0.0.1", app.port, max_idle=max_idle, idle_timeout_s=idle_timeout_s)
    # The helper's own front door (``authhelper._server``): express path included.
    helper = await start_front_door(
        "127.0.0.1", 0, gateway=Gateway(pool), limits=RelayLimits(), connections=ConnectionSet(),
        counts=ConnectionCounts(max_total=100, max_per_key=100), tls=None,
        tls_handshake_timeout_s=0.0, on_request=records.append,
    )  # fmt: skip
    try:
        yield World(app, pool, helper.sockets[0].getsockname()[1], records)
    finally:
        helper.close()
        pool.close()
        app_server.close()


async def browse(port: int, method: str = "GET", body: bytes = b"") -> bytes:
    """One request on a connection of its own (``Connection: close``): the answer's bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    answer = await reader.read(-1)  # until the helper closes
    writer.close()
    return answer


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (the scenario's deadline bounds the wait)."""
    while not condition():  # noqa: ASYNC110 (a condition of several objects, no event to wait on)
        await asyncio.sleep(0.005)


def test_browser_connections_one_after_another_share_one_app_connection() -> None:
    async def scenario() -> None:
        async with world() as w:
            for _ in range(3):
                answer = await browse(w.helper_port)
                assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok 1"), answer
                await until(lambda: w.pool.idle == 1)
            assert (w.app.opened, w.app.closed_by_peer) == (1, 0)

    run(scenario())


def test_a_connection_the_app_closed_while_idle_is_not_lent() -> None:
    async def scenario() -> None:
        async with world(app=App(close_after={1})) as w:
            assert (await browse(w.helper_port)).endswith(b"ok 1")
            await until(lambda: w.app.opened == 1 and w.pool.idle == 0)  # the watcher saw it go
            assert (await browse(w.helper_port)).endswith(b"ok 2")

    run(scenario())


def test_a_pooled_connection_that_hangs_up_on_the_request_is_retried_on_a_fresh_one() -> None:
    async def scenario() -> None:
        async with world(app=App(hang_up={(1, 2)})) as w:
            assert (await browse(w.helper_port)).endswith(b"ok 1")
            await until(lambda: w.pool.idle == 1)
            answer = await browse(w.helper_port)  # lent connection 1, which hangs up
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok 2"), answer
            assert w.app.opened == 2

    run(scenario())


def test_a_request_that_cannot_be_sent_twice_opens_its_own_and_then_gives_it_back() -> None:
    async def scenario() -> None:
        async with world() as w:
            assert (await browse(w.helper_port)).endswith(b"ok 1")
            await until(lambda: w.pool.idle == 1)
            answer = await browse(w.helper_port, "POST", b"form=1")
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok 2"), answer
            await until(lambda: w.pool.idle == 2)
            assert (await browse(w.helper_port)).endswith(b"ok 2")  # the newest idle first

    run(scenario())


def test_no_more_than_max_idle_are_kept() -> None:
    async def scenario() -> None:
        async with world(max_idle=1) as w:
            # Two browsers at once: each holds an app connection of its own.
            first, second = await asyncio.gather(browse(w.helper_port), browse(w.helper_port))
            assert {first[-4:], second[-4:]} == {b"ok 1", b"ok 2"}
            await until(lambda: w.app.closed_by_peer == 1)
            assert w.pool.idle == 1

    run(scenario())


def test_an_idle_connection_is_closed_after_the_idle_timeout_and_on_shutdown() -> None:
    async def scenario() -> None:
        async with world(idle_timeout_s=0.05) as w:
            await browse(w.helper_port)
            await until(lambda: w.app.closed_by_peer == 1 and w.pool.idle == 0)
        async with world() as w:
            await browse(w.helper_port)
            await until(lambda: w.pool.idle == 1)
            w.pool.close()
            await until(lambda: w.app.closed_by_peer == 1)
            assert w.pool.idle == 0

    run(scenario())


def test_an_app_that_is_down_is_a_502() -> None:
    async def scenario() -> None:
        async with world() as w:
            w.app.port = 0
            down = await asyncio.start_server(App().serve, "127.0.0.1", 0)
            port = down.sockets[0].getsockname()[1]
            down.close()
            await down.wait_closed()  # nothing listens there any more
            handler = connection_handler(
                "http", gateway=Gateway(AppConnections("127.0.0.1", port, max_idle=1)),
                limits=RelayLimits(), connections=ConnectionSet(),
                counts=ConnectionCounts(max_total=10, max_per_key=10),
            )  # fmt: skip
            helper = await asyncio.start_server(handler, "127.0.0.1", 0)
            answer = await browse(helper.sockets[0].getsockname()[1])
            helper.close()
            assert answer.startswith(b"HTTP/1.1 502 "), answer
            assert b"the app is not answering" in answer

    run(scenario())


def test_an_app_that_speaks_while_idle_is_closed_and_not_lent() -> None:
    async def scenario() -> None:
        async with world() as w:
            assert (await browse(w.helper_port)).endswith(b"ok 1")
            await until(lambda: w.pool.idle == 1)
            # The app's side of the idle connection sends bytes nobody asked for.
            writer = w.app.writers[1]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")
            await until(lambda: w.pool.idle == 0 and w.app.closed_by_peer == 1)
            assert (await browse(w.helper_port)).endswith(b"ok 2")  # a fresh one, not the stale

    run(scenario())


def test_a_pooled_connection_is_lent_without_a_task_and_carries_keep_alive_requests() -> None:
    """Idle connections are watched by their protocol and a timer (no task each), and the
    browser's kept-alive requests after the first go on the same app connection."""

    async def scenario() -> None:
        async with world() as w:
            assert (await browse(w.helper_port)).endswith(b"ok 1")
            await until(lambda: w.pool.idle == 1)
            tasks = {t for t in asyncio.all_tasks() if "_watch" in repr(t.get_coro())}
            assert not tasks, tasks
            reader, writer = await asyncio.open_connection("127.0.0.1", w.helper_port)
            for _ in range(3):
                writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head
                assert await reader.readexactly(4) == b"ok 1"
            writer.close()
            await until(lambda: w.pool.idle == 1)
            assert (w.app.opened, w.app.closed_by_peer) == (1, 0)
            # Each request's record names who the gateway let through (the audit's user).
            assert [(r.status, r.user) for r in w.records] == [(200, "alice")] * 4

    run(scenario())


def test_app_idle_connections_zero_is_accepted_and_means_none() -> None:
    key = new_cookie_key()
    base = ["--instance-id", "inst-a", "--portal-url", "http://p.test", f"--cookie-keys={key}"]
    assert load_config(base, {}).app_idle_connections == 16
    assert load_config([*base, "--app-idle-connections", "0"], {}).app_idle_connections == 0
    env = {"HOSTMUX_APP_IDLE_CONNECTIONS": "0"}
    assert load_config(base, env).app_idle_connections == 0
