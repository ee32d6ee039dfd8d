"""Slow and idle browsers against a real router: every one is cut off by its own timeout.

Routers here run with timeouts of a second or two; each test waits for the
router to close the connection (EOF or reset) and asserts it did not happen
before the timeout, nor long after it (a deadline of several times the
timeout, generous for a loaded machine). A trickling client paces itself by
waiting for the router's answer for a moment: what it waits on is the very
close under test, never a plain sleep.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
from dataclasses import dataclass, field

import h11
import pytest
import trio

from .conftest import App, Router, Stack, public_key_of
from .raw_http import read_to_eof
from .rss import peak_rss_growth_bytes, start_rss_window

MIB = 1024 * 1024

# Several times every timeout under test, for a loaded 2-core machine.
CLOSE_DEADLINE_S = 20.0
# A trickling client sends its next piece after waiting this long for a close.
TRICKLE_S = 0.2
# A slow reader asks for far more than any buffer on the way can hold.
SLOW_READ_BYTES = 256 * MIB
# What the router may hold for one slow reader: a read chunk, the SSH channel
# window (2 MiB), asyncio's write buffer and allocator slack.
SLOW_READ_RSS_BOUND = 32 * MIB
# linux/tcp.h: tcpi_state is the first byte of struct tcp_info.
TCP_CLOSE_STATES = frozenset({7, 8})  # TCP_CLOSE, TCP_CLOSE_WAIT


@dataclass
class TunnelWorld:
    router: Router
    app: App


async def tunnel_world(stack: Stack, *router_flags: str) -> TunnelWorld:
    """A router with ``router_flags``, the sample app behind it as ``slow.localhost``."""
    router = await stack.start_router(*router_flags)
    app = await stack.start_app()
    key = stack.new_key("slow")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "slow", app.port)
    return TunnelWorld(router, app)


async def closed_while_waiting(stream: trio.abc.ReceiveStream, wait_s: float) -> bool:
    """Wait up to ``wait_s`` for the router to close (or say anything): True if it did."""
    with trio.move_on_after(wait_s), contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some(65536)
        return True
    return False


def assert_no_traceback(router: Router) -> None:
    assert router.proc.find(r"Traceback") is None


# --- request heads -------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_slowloris_is_closed_by_the_total_header_deadline(stack: Stack, tls: bool) -> None:
    """A head trickled a byte every 0.2 s never completes: trickling does not extend it."""
    timeout_s = 2.0
    router = await stack.start_router("--header-timeout-s", str(timeout_s))
    # Long enough to outlast the deadline many times over; the blank line never comes.
    head = b"GET / HTTP/1.1\r\nHost: slow.localhost\r\nX-Slow: " + b"a" * 500
    started = trio.current_time()
    stream: trio.abc.Stream
    if tls:
        stream = await router.open_tls("slow")  # then one TLS record per byte
    else:
        stream = await trio.open_tcp_stream("127.0.0.1", router.http_port)
    sent = 0
    with trio.fail_after(CLOSE_DEADLINE_S):
        async with stream:
            for byte in head:
                try:
                    await stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    break
                sent += 1
                if await closed_while_waiting(stream, TRICKLE_S):
                    break
    elapsed = trio.current_time() - started
    assert sent < len(head)  # the router ended it, not the end of our head
    assert timeout_s <= elapsed < CLOSE_DEADLINE_S, elapsed
    # Every pause was far shorter than the timeout: only a total deadline ends this.
    assert sent >= 3
    assert router.proc.find(r"event=request") is None  # no request was ever formed
    assert_no_traceback(router)


async def test_idle_keep_alive_connection_is_closed(stack: Stack) -> None:
    timeout_s = 1.0
    world = await tunnel_world(stack, "--keepalive-timeout-s", str(timeout_s))
    async with await trio.open_tcp_stream("127.0.0.1", world.router.http_port) as stream:
        client = h11.Connection(h11.CLIENT)
        # The router's idle timer starts when it has answered: after this, for sure.
        before_answer = trio.current_time()
        response, body = await exchange(stream, client, "slow.localhost", "/bytes?n=100")
        assert response.status_code == 200
        assert len(body) == 100
        assert await read_to_eof(stream, CLOSE_DEADLINE_S) == b""  # closed without a word
        elapsed = trio.current_time() - before_answer
    assert timeout_s <= elapsed < CLOSE_DEADLINE_S, elapsed
    assert_no_traceback(world.router)


async def test_last_request_allowed_on_a_connection_says_connection_close(
    stack: Stack,
) -> None:
    world = await tunnel_world(stack, "--max-requests-per-connection", "3")
    async with await trio.open_tcp_stream("127.0.0.1", world.router.http_port) as stream:
        client = h11.Connection(h11.CLIENT)
        said_close = []
        for number in range(3):
            response, body = await exchange(stream, client, "slow.localhost", f"/bytes?n={number}")
            assert response.status_code == 200
            assert len(body) == number
            said_close.append((b"connection", b"close") in response.headers)
            if client.our_state is h11.DONE:
                client.start_next_cycle()
        assert said_close == [False, False, True]
        assert client.their_state is h11.MUST_CLOSE
        assert await read_to_eof(stream, CLOSE_DEADLINE_S) == b""  # and the connection ends
    assert_no_traceback(world.router)


# --- request bodies ------------------------------------------------------------------------


@dataclass
class RecordingApp:
    """An app (a plain TCP server) that records what each connection brought."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            pass
        self.received.append(data)
        self.closed.set()


async def test_slow_post_is_closed_after_the_body_timeout_and_the_app_gets_no_request(
    stack: Stack,
) -> None:
    timeout_s = 1.0
    router = await stack.start_router("--body-timeout-s", str(timeout_s))
    app = RecordingApp()
    listeners = await stack.nursery.start(trio.serve_tcp, app.handle, 0)
    app.port = listeners[0].socket.getsockname()[1]
    key = stack.new_key("recorder")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "post", app.port)

    declared = 1 * MIB
    piece = b"p" * 1024
    pieces = 8  # 8 x TRICKLE_S = 1.6 s of steady trickle: longer than the timeout
    async with await trio.open_tcp_stream("127.0.0.1", router.http_port) as stream:
        await stream.send_all(
            b"POST /upload HTTP/1.1\r\nHost: post.localhost\r\n"
            b"Content-Length: " + str(declared).encode() + b"\r\n\r\n"
        )
        for number in range(pieces):
            await stream.send_all(piece)
            stopped = trio.current_time()
            if number < pieces - 1:
                assert not await closed_while_waiting(stream, TRICKLE_S)  # still open
        answer = await read_to_eof(stream, CLOSE_DEADLINE_S)  # ... and then the trickle stops
        elapsed = trio.current_time() - stopped
    assert timeout_s <= elapsed + 0.05 < CLOSE_DEADLINE_S, elapsed
    assert answer.startswith(b"HTTP/1.1 408 ")  # the browser's fault, and said so
    with trio.fail_after(CLOSE_DEADLINE_S):
        await app.closed.wait()  # the app's connection was closed too ...
    [got] = app.received
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /upload HTTP/1.1\r\n")
    assert len(body) == pieces * len(piece)  # ... with the part that came, no more
    assert len(body) < declared  # not a complete request
    await router.proc.wait_for(
        r"event=request .*name=post .*status=408 bytes_in=8192 .*note=\"request body: body timeout"
    )
    assert_no_traceback(router)


async def test_upload_slower_than_the_response_timeout_but_steady_succeeds(
    stack: Stack,
) -> None:
    """The app answers an upload once it has it all: its response timer starts then."""
    world = await tunnel_world(stack, "--response-timeout-s", "1", "--body-timeout-s", "5")
    piece = b"s" * 4096
    pieces = 12  # 12 x TRICKLE_S = 2.4 s: well past the response timeout
    async with await trio.open_tcp_stream("127.0.0.1", world.router.http_port) as stream:
        client = h11.Connection(h11.CLIENT)
        size = str(pieces * len(piece))
        headers = [("host", "slow.localhost"), ("content-length", size)]
        await stream.send_all(
            client.send(h11.Request(method="POST", target="/upload", headers=headers))
        )
        for _ in range(pieces - 1):
            await stream.send_all(client.send(h11.Data(data=piece)))
            assert not await closed_while_waiting(stream, TRICKLE_S)  # no early 504
        await stream.send_all(client.send(h11.Data(data=piece)) + client.send(h11.EndOfMessage()))
        response, body = await read_response(stream, client)
    assert response.status_code == 200, body
    assert json.loads(body)["bytes"] == pieces * len(piece)
    assert_no_traceback(world.router)


# --- responses -----------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_slow_reader_is_dropped_after_the_send_timeout_in_bounded_memory(
    stack: Stack, tls: bool
) -> None:
    timeout_s = 1.0
    world = await tunnel_world(stack, "--send-timeout-s", str(timeout_s))
    router = world.router
    window = start_rss_window(router.proc.process.pid)
    mark = len(router.proc.lines)
    stream: trio.abc.Stream
    if tls:
        stream = await router.open_tls("slow")
        sock = stream.transport_stream.socket
    else:
        stream = await trio.open_tcp_stream("127.0.0.1", router.http_port)
        sock = stream.socket
    async with stream:
        await stream.send_all(
            b"GET /bytes?n=" + str(SLOW_READ_BYTES).encode() + b" HTTP/1.1\r\n"
            b"Host: slow.localhost\r\n\r\n"
        )
        first = await stream.receive_some(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        # ... and never reads again, until the router has given up.
        line = await router.proc.wait_for(
            r"event=request .*name=slow .*status=200 .*bytes_out=(\d+).*note=\"send timeout\"",
            start=mark,
        )
        growth = peak_rss_growth_bytes(window)
        # Given up means closed, not waiting for the browser to take the rest.
        with trio.fail_after(CLOSE_DEADLINE_S):
            while tcp_state(sock) not in TCP_CLOSE_STATES:
                await trio.lowlevel.checkpoint()
        rest = await read_to_eof(stream, CLOSE_DEADLINE_S)
    relayed = int(line[1])
    print(
        f"slow reader ({'https' if tls else 'http'}): router relayed {relayed / MIB:.1f} MiB "
        f"of {SLOW_READ_BYTES / MIB:.0f}, "
        f"browser had {(len(first) + len(rest)) / MIB:.1f} MiB queued; "
        f"router peak RSS growth {growth / MIB:.1f} MiB"
    )
    assert relayed < SLOW_READ_BYTES / 4
    assert growth < SLOW_READ_RSS_BOUND
    assert len(first) + len(rest) < SLOW_READ_BYTES / 4
    assert_no_traceback(router)


# --- TLS -----------------------------------------------------------------------------------


def client_hello(server_name: str) -> bytes:
    """The first flight of a real TLS client (its ClientHello), from a memory BIO."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()  # wants the server's answer: the hello is out
    return outgoing.read()


async def test_tls_handshake_timeout_closes_silent_and_half_hello_clients(
    stack: Stack,
) -> None:
    timeout_s = 1.0
    router = await stack.start_router("--tls-handshake-timeout-s", str(timeout_s))
    hello = client_hello("slow.localhost")
    assert hello[0] == 0x16  # a TLS handshake record
    for label, first_bytes in (("silent", b""), ("half hello", hello[: len(hello) // 2])):
        started = trio.current_time()
        async with await trio.open_tcp_stream("127.0.0.1", router.https_port) as stream:
            if first_bytes:
                await stream.send_all(first_bytes)
            answer = await read_to_eof(stream, CLOSE_DEADLINE_S)
        elapsed = trio.current_time() - started
        assert answer == b"", label  # not even an alert: there was nothing to answer
        assert timeout_s <= elapsed < CLOSE_DEADLINE_S, (label, elapsed)
    # A real client is still served at once.
    assert (await router.get("nobody", "/")).status_code == 404
    assert_no_traceback(router)


# --- helpers -------------------------------------------------------------------------------


async def exchange(
    stream: trio.SocketStream, client: h11.Connection, host: str, target: str
) -> tuple[h11.Response, bytes]:
    """One GET on ``stream``; the response and its whole body."""
    request = h11.Request(method="GET", target=target, headers=[("host", host)])
    await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
    return await read_response(stream, client)


async def read_response(
    stream: trio.SocketStream, client: h11.Connection
) -> tuple[h11.Response, bytes]:
    response: h11.Response | None = None
    body = b""
    with trio.fail_after(CLOSE_DEADLINE_S):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, body
            else:
                raise AssertionError(f"unexpected {event!r}")


def tcp_state(sock: trio.socket.SocketType) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return int(struct.unpack("B", info[:1])[0])
