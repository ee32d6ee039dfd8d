"""The HTTP relay (``hostmux.relay.relay.HttpRelay``) on memory streams, asserted byte for byte.

The relay is asyncio code, while the suite's async tests run under trio; so
every test here is a plain function that drives its scenario with
``asyncio.run`` under a hard ``asyncio.timeout``. No sockets, no sleeps: the
browser and the app are the two far ends of ``MemoryStream`` pipes, the app
speaks HTTP/1.1 through its own h11 server connection, and the gateway opens a
fresh pipe (and starts the app on it) whenever the relay asks for an upstream.

Timeouts under test are set to ``SHORT_S`` and met by a peer that never
answers, so they fire on their own; nothing waits for them by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hostmux.http1 import ClientInfo, Page, Request, status_page
from hostmux.relay import (
    ByteStream,
    Destination,
    HttpRelay,
    RelayLimits,
    RequestRecord,
    UpstreamUnavailable,
)

from .asyncio_bounded import run

T = TypeVar("T")

# Each scenario finishes in milliseconds; 10 s only trips on a real hang.
# The fuzz scenarios are smaller still; a hang must fail fast across 200 examples.
FUZZ_DEADLINE_S = 5.0
# A timeout under test: long enough to be the last thing that happens, short
# enough to keep the suite fast.
SHORT_S = 0.05

CLIENT = ClientInfo(peer_ip="203.0.113.7", peer_port=50123, scheme="https")
HOST = b"myapp.localhost"
LIMITS = RelayLimits()


# --- memory streams ---------------------------------------------------------------------------


class MemoryStream:
    """One end of an in-memory duplex pipe, implementing ``ByteStream``.

    ``b""`` in a queue marks end of stream. Sending to a closed peer raises
    ``ConnectionResetError``, as writing to a closed SSH channel does.
    Queues are unbounded: back-pressure is not what these tests are about.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._peer: MemoryStream | None = None
        self._at_eof = False
        self.eof_sent = False
        self.closed = False
        self.aborted = False

    def __repr__(self) -> str:
        return f"<MemoryStream {self.label} eof_sent={self.eof_sent} closed={self.closed}>"

    @property
    def peer(self) -> MemoryStream:
        assert self._peer is not None, "not connected"
        return self._peer

    async def receive(self) -> bytes:
        if self._at_eof:
            return b""
        data = await self._inbox.get()
        if not data:
            self._at_eof = True
        return data

    async def send_all(self, data: bytes) -> None:
        self.write(data)

    def write(self, data: bytes) -> None:
        if self.closed or self.eof_sent:
            raise BrokenPipeError(f"{self.label} can no longer send")
        if self.peer.closed:
            raise ConnectionResetError(f"{self.peer.label} is closed")
        if data:
            self.peer._inbox.put_nowait(bytes(data))

    def must_drain(self) -> bool:
        return False  # unbounded queues: nothing to wait for

    async def drain(self) -> None:
        return None

    async def send_eof(self) -> None:
        if not (self.eof_sent or self.closed):
            self.eof_sent = True
            self.peer._inbox.put_nowait(b"")

    def close(self) -> None:
        if self.closed:
            return
        if not self.eof_sent:
            self.peer._inbox.put_nowait(b"")
        self.eof_sent = self.closed = self._at_eof = True
        self._inbox.put_nowait(b"")  # wakes a receive pending on this end, like a closed socket

    def abort(self) -> None:
        self.aborted = True
        self.close()


def memory_pipe(left: str, right: str) -> tuple[MemoryStream, MemoryStream]:
    a, b = MemoryStream(left), MemoryStream(right)
    a._peer, b._peer = b, a
    return a, b


async def read_until_eof(stream: MemoryStream) -> bytes:
    data = b""
    while chunk := await stream.receive():
        data += chunk
    return data


async def read_until(stream: MemoryStream, received: bytes, end: bytes) -> bytes:
    """Extend ``received`` from ``stream`` until it ends with ``end``."""
    while not received.endswith(end):
        chunk = await stream.receive()
        assert chunk, f"stream ended early; got {received!r}"
        received += chunk
    return received


# --- the app --------------------------------------------------------------------------------


class AppConnection:
    """The app's end of one upstream stream, speaking HTTP/1.1 through h11.

    ``received`` is every byte the relay sent on this stream, exactly.
    """

    def __init__(self, stream: MemoryStream) -> None:
        self.stream = stream
        self.h = h11.Connection(h11.SERVER)
        self.received = b""
        self.requests: list[h11.Request] = []
        self.bodies: list[bytes] = []

    def __repr__(self) -> str:
        return f"<AppConnection requests={len(self.requests)}>"

    async def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """The next event that is not NEED_DATA (PAUSED after an upgrade request)."""
        while (event := self.h.next_event()) is h11.NEED_DATA:
            data = await self.stream.receive()
            self.received += data
            self.h.receive_data(data)
        return event

    async def read_request(self) -> h11.Request | None:
        """The next request head, or None once the relay closed the stream."""
        event = await self.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request), event
        self.requests.append(event)
        return event

    async def read_body(self) -> bytes:
        body = b""
        while not isinstance(event := await self.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        self.bodies.append(body)
        return body

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"text/plain"),),
    ) -> None:
        """Answer with ``body`` (framed by Content-Length), then get ready for the next."""
        head = [*headers, (b"content-length", str(len(body)).encode())]
        data = self.h.send(h11.Response(status_code=status, headers=head, reason=b"OK"))
        if body and self.requests[-1].method != b"HEAD":
            data += self.h.send(h11.Data(data=body))
        data += self.h.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
            self.h.start_next_cycle()

    async def wait_closed(self) -> None:
        """Read and discard until the relay closes this stream."""
        while await self.stream.receive():
            pass


AppScript = Callable[[AppConnection], Awaitable[None]]


async def hello_app(app: AppConnection) -> None:
    """Answers every request ``200 hello world`` until the relay closes the stream."""
    while await app.read_request() is not None:
        await app.read_body()
        await app.respond(200, b"hello world")


async def answer_once_app(app: AppConnection) -> None:
    """Answers one request, then closes: the app's own keep-alive timeout ran out."""
    await app.read_request()
    await app.read_body()
    await app.respond(200, b"hello world")


async def mute_app(app: AppConnection) -> None:
    """Reads a request and never answers."""
    await app.read_request()
    await app.wait_closed()


async def hang_up_app(app: AppConnection) -> None:
    """Reads a request and closes without answering."""
    await app.read_request()
    await app.read_body()


# --- the gateway ------------------------------------------------------------------------------


class FakeGateway:
    """Routes every host to the tunnel named by its first label.

    Each upstream it opens is a fresh memory pipe with an app task on the far
    end: the n-th open runs ``scripts[n]`` (the last script once they run out).
    """

    def __init__(self, *scripts: AppScript) -> None:
        self.scripts = scripts or (hello_app,)
        self.opened = 0
        self.routed: list[tuple[str, str]] = []  # (host, request id)
        self.apps: list[AppConnection] = []
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<FakeGateway opened={self.opened}>"

    def route(
        self, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Destination | Page:
        assert client == CLIENT
        self.routed.append((host, request_id))
        return Destination(key=host, label=host.partition(".")[0], open=self.open_upstream)

    async def open_upstream(self) -> ByteStream:
        script = self.scripts[min(self.opened, len(self.scripts) - 1)]
        self.opened += 1
        relay_end, app_end = memory_pipe("relay-to-app", "app")
        app = AppConnection(app_end)
        self.apps.append(app)
        self._tasks.append(asyncio.create_task(self._serve(script, app)))
        return relay_end

    async def _serve(self, script: AppScript, app: AppConnection) -> None:
        try:
            await script(app)
        finally:
            app.stream.close()

    async def apps_finished(self) -> None:
        """Wait for every app task; an app's failed assertion fails the test here."""
        await asyncio.gather(*self._tasks)


class OfflineGateway(FakeGateway):
    """The tunnel cannot be opened: the user is told why."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    async def open_upstream(self) -> ByteStream:
        self.opened += 1
        raise UpstreamUnavailable(self.reason)


class StuckGateway(FakeGateway):
    """Opening the tunnel never completes (a dead SSH connection)."""

    async def open_upstream(self) -> ByteStream:
        self.opened += 1
        await asyncio.Event().wait()
        raise AssertionError("not reached")


class PageGateway(FakeGateway):
    """Answers every request itself (as the router does for unknown names)."""

    def __init__(self, page: Page) -> None:
        super().__init__()
        self.page = page

    def route(
        self, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Destination | Page:
        self.routed.append((host, request_id))
        return self.page


# --- driving the relay ------------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    """The browser's end of one relayed connection, and what the relay reported."""

    browser: MemoryStream
    records: list[RequestRecord]
    relay_end: MemoryStream


@contextlib.asynccontextmanager
async def relay_session(
    gateway: FakeGateway, limits: RelayLimits = LIMITS
) -> AsyncIterator[Session]:
    """Run an HttpRelay for the body of the block; on exit wait for it and every app."""
    browser, relay_end = memory_pipe("browser", "relay-to-browser")
    records: list[RequestRecord] = []
    relay = HttpRelay(relay_end, CLIENT, gateway, limits, records.append)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(relay.run())
        yield Session(browser, records, relay_end)
    assert relay_end.closed, "run() returned without closing the browser stream"
    await gateway.apps_finished()


@dataclasses.dataclass
class Exchange:
    response: bytes  # everything the browser received until the relay closed
    records: list[RequestRecord]


async def exchange(gateway: FakeGateway, *chunks: bytes, limits: RelayLimits = LIMITS) -> Exchange:
    """Send ``chunks`` as separate writes, half-close, and read until the relay closes."""
    async with relay_session(gateway, limits) as session:
        for chunk in chunks:
            await session.browser.send_all(chunk)
        await session.browser.send_eof()
        response = await read_until_eof(session.browser)
    return Exchange(response, session.records)


def relay(gateway: FakeGateway, *chunks: bytes, limits: RelayLimits = LIMITS) -> Exchange:
    return run(exchange(gateway, *chunks, limits=limits))


def page_bytes(status: int, reason: str, line: str, *, request_id: str = "") -> bytes:
    """A relay status page exactly as the browser receives it (plain-text variant)."""
    body = line.encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        "cache-control: no-store",
        "x-content-type-options: nosniff",
        f"x-hostmux-error: {status}",
    ]
    if request_id:
        head.append(f"x-request-id: {request_id}")
    head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


HELLO_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\nhello world"
)


def only_record(records: list[RequestRecord]) -> RequestRecord:
    assert len(records) == 1, records
    return records[0]


def get(target: bytes = b"/", host: bytes = HOST, *extra: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + b"".join(extra) + b"\r\n"


# --- a relayed request, byte for byte -------------------------------------------------------


def test_get_reaches_the_app_rewritten_exactly() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(
        gateway,
        b"GET /path?q=1 HTTP/1.1\r\n"
        b"Host: MyApp.localhost:8443\r\n"
        b"User-Agent: test/1.0\r\n"
        b"Accept: */*\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n"
        b"X_Real_IP: 6.6.6.6\r\n"
        b"Forwarded: for=6.6.6.6\r\n"
        b"X-Request-Id: forged\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Cookie: session=1\r\n"
        b"\r\n",
    )
    rid = only_record(result.records).request_id
    assert gateway.routed == [("myapp.localhost", rid)]
    assert [app.received for app in gateway.apps] == [
        b"GET /path?q=1 HTTP/1.1\r\n"
        b"host: MyApp.localhost:8443\r\n"
        b"user-agent: test/1.0\r\n"
        b"accept: */*\r\n"
        b"cookie: session=1\r\n"
        b"x-forwarded-for: 203.0.113.7\r\n"
        b"x-forwarded-proto: https\r\n"
        b"x-forwarded-host: MyApp.localhost:8443\r\n"
        b'forwarded: for=203.0.113.7;proto=https;host="MyApp.localhost:8443"\r\n'
        b"x-request-id: " + rid.encode() + b"\r\n"
        b"\r\n"
    ]
    assert result.response == HELLO_RESPONSE


def test_hop_by_hop_response_headers_do_not_reach_the_browser() -> None:
    async def chatty_app(app: AppConnection) -> None:
        await app.read_request()
        await app.read_body()
        await app.respond(
            200,
            b"ok",
            headers=[
                (b"connection", b"keep-alive, x-internal"),
                (b"keep-alive", b"timeout=5"),
                (b"x-internal", b"1"),
                (b"set-cookie", b"a=1"),
            ],
        )
        await app.wait_closed()

    result = relay(FakeGateway(chatty_app), get())
    assert result.response == b"HTTP/1.1 200 OK\r\nset-cookie: a=1\r\ncontent-length: 2\r\n\r\nok"


def test_on_request_receives_a_record_with_status_and_byte_counts() -> None:
    async def upload_app(app: AppConnection) -> None:
        await app.read_request()
        assert await app.read_body() == b"hello world"
        await app.respond(201, b"done!")
        await app.wait_closed()

    gateway = FakeGateway(upload_app)
    result = relay(
        gateway,
        b"POST /upload?x=1 HTTP/1.1\r\nHost: myapp.localhost\r\nContent-Length: 11\r\n\r\n",
        b"hello world",
    )
    record = only_record(result.records)
    assert record.duration_ms >= 0
    assert dataclasses.replace(record, duration_ms=0.0) == RequestRecord(
        request_id=gateway.routed[0][1],
        peer="203.0.113.7:50123",
        host="myapp.localhost",
        name="myapp",
        method="POST",
        target="/upload?x=1",
        status=201,
        bytes_in=11,
        bytes_out=5,
        duration_ms=0.0,
    )
    assert result.response == (
        b"HTTP/1.1 201 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\ndone!"
    )


# --- keep-alive and connection binding ----------------------------------------------------


def test_two_requests_on_one_connection_reuse_one_upstream() -> None:
    gateway = FakeGateway(hello_app)

    async def scenario() -> list[RequestRecord]:
        async with relay_session(gateway) as session:
            await session.browser.send_all(get(b"/one"))
            received = await read_until(session.browser, b"", b"hello world")
            await session.browser.send_all(get(b"/two"))
            received = await read_until(session.browser, received, HELLO_RESPONSE * 2)
            assert received == HELLO_RESPONSE * 2
            await session.browser.send_eof()
            assert await read_until_eof(session.browser) == b""
        return session.records

    records = run(scenario())
    assert gateway.opened == 1
    assert [r.target for r in gateway.apps[0].requests] == [b"/one", b"/two"]
    assert [(r.target, r.status) for r in records] == [("/one", 200), ("/two", 200)]
    assert records[0].request_id != records[1].request_id


def test_pipelined_requests_are_answered_in_order_on_one_upstream() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, get(b"/one") + get(b"/two") + get(b"/three"))
    assert result.response == HELLO_RESPONSE * 3
    assert gateway.opened == 1
    assert [r.target for r in gateway.apps[0].requests] == [b"/one", b"/two", b"/three"]


def test_second_request_for_another_host_gets_421_and_the_connection_closes() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, get(b"/", HOST) + get(b"/", b"other.localhost") + get(b"/", HOST))
    first, second = result.records
    assert result.response == HELLO_RESPONSE + page_bytes(
        421,
        "Misdirected Request",
        "421 Misdirected request: this connection is bound to another host; open a new one"
        f" (request id {second.request_id})\n",
        request_id=second.request_id,
    )
    assert (first.status, second.status) == (200, 421)
    assert second.host == "other.localhost"
    assert [host for host, _ in gateway.routed] == ["myapp.localhost"]


def test_same_host_in_another_spelling_keeps_the_connection() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, get(b"/", HOST) + get(b"/", b"MYAPP.localhost.:443"))
    assert result.response == HELLO_RESPONSE * 2
    assert gateway.opened == 1


def test_upstream_closed_between_requests_is_replaced_for_a_bodiless_request() -> None:
    gateway = FakeGateway(answer_once_app, hello_app)

    async def scenario() -> None:
        async with relay_session(gateway) as session:
            await session.browser.send_all(get(b"/one"))
            received = await read_until(session.browser, b"", b"hello world")
            await session.browser.send_all(get(b"/two"))
            received = await read_until(session.browser, received, HELLO_RESPONSE * 2)
            assert received == HELLO_RESPONSE * 2
            await session.browser.send_eof()
            await read_until_eof(session.browser)

    run(scenario())
    assert gateway.opened == 2
    assert [[r.target for r in app.requests] for app in gateway.apps] == [[b"/one"], [b"/two"]]


def test_reused_upstream_that_hangs_up_on_the_next_request_is_retried() -> None:
    async def answer_once_then_hang_up(app: AppConnection) -> None:
        await answer_once_app(app)
        await hang_up_app(app)  # its keep-alive timer fired as the request arrived

    gateway = FakeGateway(answer_once_then_hang_up, hello_app)

    async def scenario() -> bytes:
        async with relay_session(gateway) as session:
            await session.browser.send_all(get(b"/one"))
            received = await read_until(session.browser, b"", b"hello world")
            await session.browser.send_all(get(b"/two"))
            await session.browser.send_eof()
            return await read_until_eof(session.browser) + received

    assert run(scenario()) == HELLO_RESPONSE * 2
    assert gateway.opened == 2


# --- request targets and methods ------------------------------------------------------------


def test_absolute_form_target_agreeing_with_host_is_rewritten_to_origin_form() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(
        gateway,
        b"GET HTTP://MyApp.localhost:8443/a/b?c=d HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n",
        b"GET http://myapp.localhost HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n",
    )
    assert result.response == HELLO_RESPONSE * 2
    assert [r.target for r in gateway.apps[0].requests] == [b"/a/b?c=d", b"/"]
    assert [r.target for r in result.records] == [
        "HTTP://MyApp.localhost:8443/a/b?c=d",
        "http://myapp.localhost",
    ]


@pytest.mark.parametrize(
    "target",
    [
        b"http://other.localhost/",
        b"http://user@myapp.localhost/",
        b"ftp://myapp.localhost/",
        b"http:///path",
        b"http://[::1]/",
    ],
)
def test_absolute_form_target_not_matching_host_is_400(target: bytes) -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, b"GET " + target + b" HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n")
    rid = only_record(result.records).request_id
    assert result.response == page_bytes(
        400,
        "Bad Request",
        f"400 Bad request: the absolute request target does not match Host (request id {rid})\n",
        request_id=rid,
    )
    assert gateway.opened == 0


def test_authority_form_target_outside_connect_is_a_parse_error() -> None:
    # llhttp refuses it while parsing (it is CONNECT's form): no request is formed.
    gateway = FakeGateway(hello_app)
    result = relay(gateway, b"GET myapp.localhost:80 HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n")
    assert result.response == page_bytes(
        400, "Bad Request", "400 Bad request: the request could not be parsed as HTTP/1.1\n"
    )
    assert gateway.opened == 0


def test_connect_is_405() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(
        gateway, b"CONNECT myapp.localhost:443 HTTP/1.1\r\nHost: myapp.localhost:443\r\n\r\n"
    )
    record = only_record(result.records)
    rid = record.request_id
    assert result.response == page_bytes(
        405,
        "Method Not Allowed",
        f"405 Method not allowed: CONNECT is not supported: this is not a proxy"
        f" (request id {rid})\n",
        request_id=rid,
    )
    assert (record.method, record.status) == ("CONNECT", 405)
    assert gateway.opened == 0


def test_asterisk_form_is_400() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, b"OPTIONS * HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n")
    rid = only_record(result.records).request_id
    assert result.response == page_bytes(
        400,
        "Bad Request",
        f"400 Bad request: asterisk-form request targets are not supported (request id {rid})\n",
        request_id=rid,
    )
    assert gateway.opened == 0


def test_missing_host_on_http_1_0_is_400() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, b"GET / HTTP/1.0\r\n\r\n")
    record = only_record(result.records)
    rid = record.request_id
    # h11 spells the header it adds itself for an HTTP/1.0 client in title case.
    assert result.response == page_bytes(
        400,
        "Bad Request",
        f"400 Bad request: the request has no Host header (request id {rid})\n",
        request_id=rid,
    ).replace(b"connection: close", b"Connection: close")
    assert record.status == 400
    assert gateway.routed == []


def test_missing_host_on_http_1_1_is_400_without_a_request() -> None:
    result = relay(FakeGateway(hello_app), b"GET / HTTP/1.1\r\n\r\n")
    assert result.response == page_bytes(
        400, "Bad Request", "400 Bad request: the request could not be parsed as HTTP/1.1\n"
    )
    record = only_record(result.records)  # logged, though no request was formed
    assert (record.method, record.target, record.status) == ("-", "-", 400)
    assert record.note == "unparsable request"


@pytest.mark.parametrize(
    "host", [b"[::1]:8443", b"user@myapp.localhost", b"my_app.localhost", b"myapp.localhost:x"]
)
def test_unusable_host_is_400(host: bytes) -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, get(b"/", host))
    rid = only_record(result.records).request_id
    assert result.response == page_bytes(
        400,
        "Bad Request",
        f"400 Bad request: the Host header is not a valid host name (request id {rid})\n",
        request_id=rid,
    )
    assert gateway.routed == []


def test_http_1_0_request_is_relayed_and_the_connection_closes() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, b"GET / HTTP/1.0\r\nHost: myapp.localhost\r\n\r\n" + get())
    assert result.response == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n"
        b"Connection: close\r\n\r\nhello world"
    )
    assert gateway.apps[0].requests[0].http_version == b"1.1"
    assert len(result.records) == 1


# --- malformed and oversized requests ---------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /\r\nHost: myapp.localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: myapp.localhost\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost myapp.localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS on the plain port
    ],
)
def test_malformed_request_is_400_and_the_connection_closes(request_bytes: bytes) -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, request_bytes, get())
    assert result.response == page_bytes(
        400, "Bad Request", "400 Bad request: the request could not be parsed as HTTP/1.1\n"
    )
    record = only_record(result.records)  # logged, though no request was formed
    assert (record.method, record.target, record.status) == ("-", "-", 400)
    assert record.note == "unparsable request"
    assert gateway.opened == 0


def test_oversized_head_is_431() -> None:
    gateway = FakeGateway(hello_app)
    head = get(b"/", HOST, b"X-Big: " + b"x" * 2000 + b"\r\n")
    # A large head reaches the relay in several reads, as TCP delivers it.
    pieces = [head[i : i + 500] for i in range(0, len(head), 500)]
    result = relay(gateway, *pieces, limits=RelayLimits(max_header_bytes=1024))
    assert result.response == page_bytes(
        431,
        "Request Header Fields Too Large",
        "431 Request header fields too large: the request head is too large\n",
    )
    assert gateway.opened == 0


def test_oversized_head_in_one_read_is_431() -> None:
    gateway = FakeGateway(hello_app)
    head = get(b"/", HOST, b"X-Big: " + b"x" * 2000 + b"\r\n")
    result = relay(gateway, head, limits=RelayLimits(max_header_bytes=1024))
    assert result.response.startswith(b"HTTP/1.1 431 ")
    assert gateway.opened == 0


def test_head_just_under_the_limit_is_relayed() -> None:
    head = get(b"/", HOST, b"X-Pad: " + b"x" * 900 + b"\r\n")
    assert len(head) < 1024
    result = relay(FakeGateway(hello_app), head, limits=RelayLimits(max_header_bytes=1024))
    assert result.response == HELLO_RESPONSE


def test_connection_naming_host_still_gets_an_answer() -> None:
    result = relay(FakeGateway(hello_app), get(b"/", HOST, b"Connection: host\r\n"))
    assert result.response == HELLO_RESPONSE


# --- bodies -----------------------------------------------------------------------------------


def test_chunked_request_body_is_streamed_to_the_app() -> None:
    first_chunk_seen = asyncio.Event()

    async def upload_app(app: AppConnection) -> None:
        request = await app.read_request()
        assert request is not None
        assert (b"transfer-encoding", b"chunked") in list(request.headers)
        event = await app.next_event()
        assert isinstance(event, h11.Data)
        assert event.data == b"hello"
        first_chunk_seen.set()  # the relay did not wait for the whole body
        rest = await app.read_body()
        assert rest == b" world"
        await app.respond(200, b"got 11 bytes")
        await app.wait_closed()

    gateway = FakeGateway(upload_app)

    async def scenario() -> tuple[bytes, list[RequestRecord]]:
        async with relay_session(gateway) as session:
            await session.browser.send_all(
                b"POST /upload HTTP/1.1\r\nHost: myapp.localhost\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
            await first_chunk_seen.wait()
            await session.browser.send_all(b"6\r\n world\r\n0\r\n\r\n")
            await session.browser.send_eof()
            response = await read_until_eof(session.browser)
        return response, session.records

    response, records = run(scenario())
    assert response == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\ngot 11 bytes"
    )
    assert gateway.apps[0].received.endswith(b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    record = only_record(records)
    assert (record.status, record.bytes_in, record.bytes_out) == (200, 11, 12)


def test_content_length_body_then_keep_alive() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(
        gateway,
        b"PUT /x HTTP/1.1\r\nHost: myapp.localhost\r\nContent-Length: 3\r\n\r\nabc" + get(),
    )
    assert result.response == HELLO_RESPONSE * 2
    assert gateway.apps[0].bodies == [b"abc", b""]
    assert gateway.opened == 1


def test_app_answering_before_the_body_ends_closes_the_connection() -> None:
    async def impatient_app(app: AppConnection) -> None:
        await app.read_request()
        await app.respond(413, b"too big")
        await app.wait_closed()

    gateway = FakeGateway(impatient_app)

    async def scenario() -> bytes:
        async with relay_session(gateway) as session:
            await session.browser.send_all(
                b"POST / HTTP/1.1\r\nHost: myapp.localhost\r\nContent-Length: 100\r\n\r\nabc"
            )
            # No EOF from the browser: the relay must end the connection itself.
            return await read_until_eof(session.browser)

    assert run(scenario()) == (
        b"HTTP/1.1 413 OK\r\ncontent-type: text/plain\r\ncontent-length: 7\r\n\r\ntoo big"
    )


def test_head_response_has_no_body() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(gateway, b"HEAD / HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n" + get())
    assert result.response == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\n\r\n"
        + HELLO_RESPONSE
    )
    assert [r.method for r in gateway.apps[0].requests] == [b"HEAD", b"GET"]


def test_head_refusal_has_no_body() -> None:
    result = relay(
        OfflineGateway("the tunnel 'myapp' is offline"),
        b"HEAD / HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n",
    )
    rid = only_record(result.records).request_id
    full = page_bytes(
        502,
        "Bad Gateway",
        f"502 Bad gateway: the tunnel 'myapp' is offline (request id {rid})\n",
        request_id=rid,
    )
    assert result.response == full[: full.index(b"\r\n\r\n") + 4]


# --- upstream failures ------------------------------------------------------------------------


def test_app_closing_without_answering_is_502() -> None:
    result = relay(FakeGateway(hang_up_app), get())
    record = only_record(result.records)
    assert result.response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"\r\n\r\n502 Bad gateway: the app " in result.response
    assert record.status == 502


def test_app_closing_without_answering_is_reported_as_such() -> None:
    result = relay(FakeGateway(hang_up_app), get())
    rid = only_record(result.records).request_id
    assert result.response == page_bytes(
        502,
        "Bad Gateway",
        f"502 Bad gateway: the app closed the connection without answering (request id {rid})\n",
        request_id=rid,
    )


def test_app_sending_garbage_is_502() -> None:
    async def garbage_app(app: AppConnection) -> None:
        await app.read_request()
        await app.stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        await app.wait_closed()

    result = relay(FakeGateway(garbage_app), get())
    rid = only_record(result.records).request_id
    assert result.response == page_bytes(
        502,
        "Bad Gateway",
        f"502 Bad gateway: the app sent an invalid response (request id {rid})\n",
        request_id=rid,
    )


def test_app_switching_protocols_unasked_is_502() -> None:
    async def switching_app(app: AppConnection) -> None:
        await app.read_request()
        await app.stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
        await app.wait_closed()

    result = relay(FakeGateway(switching_app), get())
    assert result.response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert only_record(result.records).status == 502


def test_upstream_unavailable_is_502_with_its_message() -> None:
    gateway = OfflineGateway("the tunnel 'myapp' is offline")
    result = relay(gateway, get() + get())
    record = only_record(result.records)
    rid = record.request_id
    assert result.response == page_bytes(
        502,
        "Bad Gateway",
        f"502 Bad gateway: the tunnel 'myapp' is offline (request id {rid})\n",
        request_id=rid,
    )
    assert (record.status, record.name) == (502, "myapp")
    assert gateway.opened == 1


def test_upstream_unavailable_message_is_escaped_for_browsers() -> None:
    result = relay(
        OfflineGateway("the tunnel <myapp> is offline"),
        get(b"/", HOST, b"Accept: text/html,*/*\r\n"),
    )
    assert b"content-type: text/html; charset=utf-8\r\n" in result.response
    assert b"<p>the tunnel &lt;myapp&gt; is offline</p>" in result.response


def test_open_timing_out_is_504() -> None:
    gateway = StuckGateway()
    result = relay(gateway, get(), limits=RelayLimits(connect_timeout_s=SHORT_S))
    rid = only_record(result.records).request_id
    assert result.response == page_bytes(
        504,
        "Gateway Timeout",
        f"504 Gateway timeout: the tunnel 'myapp' did not answer in time (request id {rid})\n",
        request_id=rid,
    )
    assert gateway.opened == 1


def test_app_never_answering_is_504() -> None:
    result = relay(FakeGateway(mute_app), get(), limits=RelayLimits(response_timeout_s=SHORT_S))
    record = only_record(result.records)
    rid = record.request_id
    assert result.response == page_bytes(
        504,
        "Gateway Timeout",
        f"504 Gateway timeout: the app did not answer in time (request id {rid})\n",
        request_id=rid,
    )
    assert (record.status, record.note) == (504, "response timeout")


def test_gateway_page_is_sent_and_the_connection_closes() -> None:
    page = status_page(404, "no tunnel is named 'nope'", request_id="r1")
    gateway = PageGateway(page)
    result = relay(gateway, get(b"/", b"nope.localhost") + get(b"/", b"nope.localhost"))
    assert result.response == page_bytes(
        404,
        "Not Found",
        "404 No such tunnel: no tunnel is named 'nope' (request id r1)\n",
        request_id="r1",
    )
    assert [r.status for r in result.records] == [404]
    assert gateway.opened == 0


# --- timeouts and limits on the browser side -----------------------------------------------


def test_browser_sending_nothing_is_closed_silently_after_the_header_timeout() -> None:
    async def scenario() -> tuple[bytes, list[RequestRecord]]:
        gateway = FakeGateway(hello_app)
        limits = RelayLimits(header_timeout_s=SHORT_S)
        async with relay_session(gateway, limits) as session:
            await session.browser.send_all(b"GET / HTTP/1.1\r\nHost: myapp")  # and stalls
            received = await read_until_eof(session.browser)
        return received, session.records

    assert run(scenario()) == (b"", [])


def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async def scenario() -> bytes:
        gateway = FakeGateway(hello_app)
        limits = RelayLimits(keepalive_timeout_s=SHORT_S)
        async with relay_session(gateway, limits) as session:
            await session.browser.send_all(get())
            return await read_until_eof(session.browser)  # the browser never half-closes

    assert run(scenario()) == HELLO_RESPONSE


def test_connection_ends_after_max_requests_per_connection() -> None:
    gateway = FakeGateway(hello_app)
    limits = RelayLimits(max_requests_per_connection=2)
    result = relay(gateway, get(b"/1") + get(b"/2") + get(b"/3"), limits=limits)
    last = HELLO_RESPONSE.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    assert result.response == HELLO_RESPONSE + last  # the last answer says it is the last
    assert [r.target for r in result.records] == ["/1", "/2"]


def test_browser_breaking_off_its_body_closes_the_upstream() -> None:
    async def patient_app(app: AppConnection) -> None:
        await app.read_request()
        with pytest.raises(h11.RemoteProtocolError):
            await app.read_body()

    gateway = FakeGateway(patient_app)
    result = relay(
        gateway, b"POST / HTTP/1.1\r\nHost: myapp.localhost\r\nContent-Length: 10\r\n\r\nabc"
    )
    record = only_record(result.records)
    assert record.note == "request body: malformed or cut short"
    assert record.status == 400  # to a browser that may still be there to read it
    assert record.bytes_in == 3
    assert gateway.apps[0].received.endswith(b"\r\n\r\nabc")


def test_browser_stalling_its_body_gets_408_and_the_app_no_complete_request() -> None:
    async def patient_app(app: AppConnection) -> None:
        await app.read_request()
        with pytest.raises(h11.RemoteProtocolError):  # the stream ends mid-body
            await app.read_body()

    async def scenario() -> tuple[bytes, list[RequestRecord]]:
        gateway = FakeGateway(patient_app)
        limits = RelayLimits(body_timeout_s=SHORT_S)
        async with relay_session(gateway, limits) as session:
            await session.browser.send_all(
                b"POST / HTTP/1.1\r\nHost: myapp.localhost\r\nContent-Length: 10\r\n\r\nabc"
            )  # ... and the rest never comes, nor the end of the stream
            received = await read_until_eof(session.browser)
        assert gateway.apps[0].received.endswith(b"\r\n\r\nabc")
        return received, session.records

    received, records = run(scenario())
    assert received.startswith(b"HTTP/1.1 408 ")
    assert only_record(records).note == "request body: body timeout"


def test_response_timeout_starts_once_the_request_body_is_up() -> None:
    """An upload longer than the response timeout is not a slow answer (nginx-like)."""

    async def scenario() -> bytes:
        gateway = FakeGateway(hello_app)
        limits = RelayLimits(response_timeout_s=SHORT_S)
        async with relay_session(gateway, limits) as session:
            await session.browser.send_all(
                b"POST / HTTP/1.1\r\nHost: myapp.localhost\r\nContent-Length: 6\r\n\r\nabc"
            )
            # Four response timeouts pass with the body half sent: no 504 comes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHORT_S * 4):
                    early = await session.browser.receive()
                    raise AssertionError(f"answered mid-upload: {early!r}")
            await session.browser.send_all(b"def")
            received = await read_until(session.browser, b"", b"hello world")
            await session.browser.send_eof()
            await read_until_eof(session.browser)
        return received

    assert run(scenario()) == HELLO_RESPONSE


def test_a_response_cut_short_by_the_app_is_closed_not_reset() -> None:
    async def truncating_app(app: AppConnection) -> None:
        await app.read_request()
        await app.read_body()
        await app.stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        app.stream.close()  # 7 bytes short: the browser's response cannot complete

    async def scenario(script: AppScript) -> MemoryStream:
        async with relay_session(FakeGateway(script)) as session:
            await session.browser.send_all(get())
            await session.browser.send_eof()
            await read_until_eof(session.browser)
        return session.relay_end

    assert not run(scenario(hello_app)).aborted  # served, then the browser left: a clean close
    # Cut off mid-response: the browser still gets what was sent (its framing
    # tells it the rest is missing); a reset is only for a browser that stopped
    # reading (send timeout), and a close that cannot flush is reset by the stream.
    assert not run(scenario(truncating_app)).aborted


def test_interim_100_continue_from_the_app_reaches_the_browser() -> None:
    async def continue_app(app: AppConnection) -> None:
        await app.read_request()
        interim = h11.InformationalResponse(status_code=100, headers=[])
        await app.stream.send_all(app.h.send(interim))
        assert await app.read_body() == b"abc"
        await app.respond(200, b"hello world")
        await app.wait_closed()

    async def scenario() -> bytes:
        async with relay_session(FakeGateway(continue_app)) as session:
            await session.browser.send_all(
                b"POST / HTTP/1.1\r\nHost: myapp.localhost\r\nContent-Length: 3\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            received = await read_until(session.browser, b"", b"HTTP/1.1 100 \r\n\r\n")
            await session.browser.send_all(b"abc")  # only now, as curl does
            await session.browser.send_eof()
            return received + await read_until_eof(session.browser)

    assert run(scenario()) == b"HTTP/1.1 100 \r\n\r\n" + HELLO_RESPONSE


def test_repr_names_the_peer_and_the_bound_host() -> None:
    async def scenario() -> tuple[str, str]:
        browser, relay_end = memory_pipe("browser", "relay-to-browser")
        gateway = FakeGateway(hello_app)
        relay = HttpRelay(relay_end, CLIENT, gateway, LIMITS, lambda record: None)
        before = repr(relay)
        await browser.send_all(get())
        await browser.send_eof()
        await relay.run()
        await gateway.apps_finished()
        return before, repr(relay)

    assert run(scenario()) == (
        "<HttpRelay peer=203.0.113.7:50123 host=None>",
        "<HttpRelay peer=203.0.113.7:50123 host=myapp.localhost>",
    )


# --- upgrades ---------------------------------------------------------------------------------

WEBSOCKET_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: myapp.localhost\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
ACCEPT_KEY = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_websocket_upgrade_becomes_a_raw_splice_both_ways() -> None:
    async def websocket_app(app: AppConnection) -> None:
        request = await app.read_request()
        assert request is not None
        assert (b"connection", b"upgrade") in list(request.headers)
        assert (b"upgrade", b"websocket") in list(request.headers)
        assert isinstance(await app.next_event(), h11.EndOfMessage)
        assert await app.next_event() is h11.PAUSED
        data = app.h.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[
                    (b"upgrade", b"websocket"),
                    (b"connection", b"Upgrade"),
                    (b"sec-websocket-accept", ACCEPT_KEY),
                ],
                reason=b"Switching Protocols",
            )
        )
        await app.stream.send_all(data + b"hello")  # raw bytes right behind the 101
        raw = await read_until(app.stream, bytes(app.h.trailing_data[0]), b"firstping")
        assert raw == b"firstping"
        await app.stream.send_all(b"pong")
        assert await app.stream.receive() == b""  # the browser's half-close came through
        await app.stream.send_all(b"bye")  # and this direction still works
        await app.stream.send_eof()

    gateway = FakeGateway(websocket_app)

    async def scenario() -> tuple[bytes, list[RequestRecord]]:
        async with relay_session(gateway) as session:
            browser = session.browser
            await browser.send_all(WEBSOCKET_REQUEST + b"first")
            received = await read_until(browser, b"", b"hello")
            await browser.send_all(b"ping")
            received = await read_until(browser, received, b"pong")
            await browser.send_eof()
            received += await read_until_eof(browser)
        return received, session.records

    received, records = run(scenario())
    assert received == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"sec-websocket-accept: " + ACCEPT_KEY + b"\r\n"
        b"connection: upgrade\r\n"
        b"upgrade: websocket\r\n"
        b"\r\n"
        b"hellopongbye"
    )
    record = only_record(records)
    assert (record.status, record.bytes_in, record.bytes_out) == (101, 9, 12)
    assert gateway.opened == 1


def test_idle_websocket_is_closed_after_the_websocket_idle_timeout() -> None:
    async def silent_websocket_app(app: AppConnection) -> None:
        await app.read_request()
        await app.read_body()
        await app.stream.send_all(
            app.h.send(
                h11.InformationalResponse(
                    status_code=101,
                    headers=[(b"upgrade", b"websocket"), (b"connection", b"upgrade")],
                )
            )
        )
        await app.wait_closed()

    async def scenario() -> bytes:
        limits = RelayLimits(websocket_idle_timeout_s=SHORT_S)
        async with relay_session(FakeGateway(silent_websocket_app), limits) as session:
            await session.browser.send_all(WEBSOCKET_REQUEST)
            return await read_until_eof(session.browser)  # neither side says a word

    assert run(scenario()) == (
        b"HTTP/1.1 101 \r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    )


def test_websocket_refused_then_a_normal_request_on_the_same_connection() -> None:
    async def refusing_app(app: AppConnection) -> None:
        assert await app.read_request() is not None
        await app.read_body()
        await app.respond(400, b"no websockets here")
        await app.wait_closed()  # the relay lets go of it: not reused after an upgrade

    gateway = FakeGateway(refusing_app, hello_app)

    async def scenario() -> bytes:
        async with relay_session(gateway) as session:
            await session.browser.send_all(WEBSOCKET_REQUEST)
            received = await read_until(session.browser, b"", b"no websockets here")
            await session.browser.send_all(get(b"/after"))
            received = await read_until(session.browser, received, b"hello world")
            await session.browser.send_eof()
            return received + await read_until_eof(session.browser)

    assert run(scenario()) == (
        b"HTTP/1.1 400 OK\r\ncontent-type: text/plain\r\ncontent-length: 18\r\n\r\n"
        b"no websockets here" + HELLO_RESPONSE
    )
    assert gateway.opened == 2  # a fresh upstream after the refused upgrade
    assert [r.target for r in gateway.apps[0].requests] == [b"/chat"]
    assert [r.target for r in gateway.apps[1].requests] == [b"/after"]


def test_h2c_upgrade_is_not_passed_to_the_app() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(
        gateway,
        b"GET / HTTP/1.1\r\n"
        b"Host: myapp.localhost\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        b"\r\n",
    )
    assert result.response == HELLO_RESPONSE
    rid = only_record(result.records).request_id
    assert gateway.apps[0].received == (
        b"GET / HTTP/1.1\r\n"
        b"host: myapp.localhost\r\n"
        b"x-forwarded-for: 203.0.113.7\r\n"
        b"x-forwarded-proto: https\r\n"
        b"x-forwarded-host: myapp.localhost\r\n"
        b'forwarded: for=203.0.113.7;proto=https;host="myapp.localhost"\r\n'
        b"x-request-id: " + rid.encode() + b"\r\n"
        b"\r\n"
    )


def test_websocket_upgrade_on_post_is_not_passed_on() -> None:
    gateway = FakeGateway(hello_app)
    result = relay(
        gateway,
        b"POST / HTTP/1.1\r\nHost: myapp.localhost\r\nConnection: upgrade\r\n"
        b"Upgrade: websocket\r\nContent-Length: 0\r\n\r\n",
    )
    assert result.response == HELLO_RESPONSE
    headers = dict(gateway.apps[0].requests[0].headers)
    assert b"upgrade" not in headers
    assert b"connection" not in headers


# --- whatever the client sends --------------------------------------------------------------

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS", b"G\x00T", b""]
TARGETS = [
    b"/",
    b"/p?q=1",
    b"*",
    b"http://myapp.localhost/x",
    b"http://other.localhost/",
    b"myapp.localhost:443",
    b"//evil.example/",
    b"/\xff",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b""]
HEADER_LINES = [
    b"Host: myapp.localhost",
    b"Host: other.localhost",
    b"Host: [::1]",
    b"Host:",
    b"Content-Length: 3",
    b"Content-Length: 0",
    b"Content-Length: -1",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Connection: upgrade",
    b"Connection: close",
    b"Connection: host",
    b"Upgrade: websocket",
    b"Upgrade: h2c",
    b"Expect: 100-continue",
    b"Accept: text/html",
    b"X_Forwarded_For: 1.2.3.4",
    b"No colon here",
    b" folded",
]
BODIES = [b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"3\r\nab", b"zz\r\n"]


def request_bytes(
    method: bytes, target: bytes, version: bytes, lines: list[bytes], body: bytes
) -> bytes:
    head = b" ".join(part for part in (method, target, version) if part)
    return head + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


# Mostly nearly-valid requests (so that many reach the app), some raw noise.
http_requests = st.builds(
    request_bytes,
    st.just(b"GET") | st.sampled_from(METHODS),
    st.just(b"/") | st.sampled_from(TARGETS),
    st.just(b"HTTP/1.1") | st.sampled_from(VERSIONS),
    st.lists(st.sampled_from(HEADER_LINES), max_size=4).map(
        lambda lines: [b"Host: myapp.localhost", *lines]
    )
    | st.lists(st.sampled_from(HEADER_LINES), max_size=4),
    st.sampled_from(BODIES),
)
client_bytes = st.lists(http_requests | st.binary(max_size=24), min_size=1, max_size=4).map(
    b"".join
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut into pieces at ``cuts`` (a read may end anywhere)."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if a < b]


async def robust_app(app: AppConnection) -> None:
    """``hello_app`` that takes a broken-off request as the end of the connection."""
    with contextlib.suppress(h11.ProtocolError, ConnectionError):
        await hello_app(app)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=client_bytes, cuts=st.lists(st.integers(min_value=1, max_value=300), max_size=6))
def test_any_client_bytes_end_in_a_response_or_silence(data: bytes, cuts: list[int]) -> None:
    chunks = split_at(data, cuts)
    result = run(exchange(FakeGateway(robust_app), *chunks), deadline_s=FUZZ_DEADLINE_S)
    assert result.response == b"" or result.response.startswith(b"HTTP/1.1 ")
    event(result.response[:12].decode("latin-1") or "silence")  # --hypothesis-show-statistics
