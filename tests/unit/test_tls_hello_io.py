"""The ClientHello reader's I/O helpers on real loopback sockets with real TLS.

``peek_client_hello`` must leave the hello in the socket, so that the
handshake that follows (with the context the hello chose) succeeds, and must
wake only when enough bytes have arrived; ``read_client_hello`` must read the
hello and not one byte more. Each scenario runs on asyncio's loop and on
uvloop (the router's).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from hostmux.tls_hello import (
    ClientHello,
    HelloReader,
    HelloTimeout,
    IncompleteHello,
    NotTls,
    peek_client_hello,
    read_client_hello,
)
from keys import ensure_dev_tls

from .client_hellos.capture import CLIENTS, capture
from .test_tls_hello import REAL, python_hello

T = TypeVar("T")
_DEADLINE_S = 10.0
_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(_LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    def run(scenario: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(_DEADLINE_S):
                return await scenario

        with asyncio.Runner(loop_factory=_LOOPS[request.param]) as runner:
            return runner.run(bounded())

    return run


class CountingSocket(socket.socket):
    """A real socket that counts its ``recv`` calls (how often the peek woke)."""

    recvs = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.recvs += 1
        return super().recv(bufsize, flags)


def accepted_pair() -> tuple[CountingSocket, socket.socket]:
    """A connected loopback pair: (server side, non-blocking; client side, blocking)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    counted = CountingSocket(fileno=conn.detach())
    counted.setblocking(False)
    return counted, client


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (kernel state has no event to wait on)."""
    deadline = time.monotonic() + 5.0
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def low_water_mark(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


# --- peek_client_hello -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two server certificates (``*.one.localhost``, ``*.two.localhost``) from one dev CA."""
    folder = tmp_path_factory.mktemp("tls")
    found: dict[str, Any] = {}
    for name in ("one", "two"):
        files, _ = ensure_dev_tls(folder, f"{name}.localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        found[name] = context
        found["ca"] = files.ca_cert
    acme = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    files, _ = ensure_dev_tls(folder, "one.localhost")
    acme.load_cert_chain(files.cert, files.key)
    acme.set_alpn_protocols(["acme-tls/1"])
    found["acme"] = acme
    return found


@pytest.mark.parametrize(
    ("server_hostname", "alpn", "chosen"),
    [
        ("app.one.localhost", None, "one"),
        ("app.two.localhost", ["h2", "http/1.1"], "two"),
        ("one.localhost", ["acme-tls/1"], "acme"),
    ],
)
def test_the_peeked_hello_chooses_the_context_of_the_handshake_that_follows(
    run: Callable[[Coroutine[Any, Any, None]], None],
    contexts: dict[str, Any],
    server_hostname: str,
    alpn: list[str] | None,
    chosen: str,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        listening = socket.create_server(("127.0.0.1", 0))
        listening.setblocking(False)
        client_context = ssl.create_default_context(cafile=str(contexts["ca"]))
        if alpn:
            client_context.set_alpn_protocols(alpn)
        port = listening.getsockname()[1]
        connecting = asyncio.create_task(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname=server_hostname
            )
        )
        conn, _ = await loop.sock_accept(listening)
        listening.close()
        hello = await peek_client_hello(conn, timeout_s=5.0)
        assert hello.sni == server_hostname
        assert hello.alpn == tuple(a.encode() for a in alpn or [])
        assert hello.sni is not None
        name = "acme" if b"acme-tls/1" in hello.alpn else hello.sni.split(".")[1]
        assert name == chosen
        assert low_water_mark(conn) == 1  # reset for whoever reads next
        server_reader = asyncio.StreamReader()
        transport, _ = await loop.connect_accepted_socket(
            lambda: asyncio.StreamReaderProtocol(server_reader), conn, ssl=contexts[name]
        )
        _, writer = await connecting
        tls = writer.get_extra_info("ssl_object")
        assert tls.selected_alpn_protocol() == ("acme-tls/1" if chosen == "acme" else None)
        writer.write(b"ping")
        assert await server_reader.readexactly(4) == b"ping"
        writer.close()
        transport.close()

    run(scenario())


def test_a_hello_trickling_in_wakes_the_peek_only_when_enough_has_arrived(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    hello = python_hello("slow.example.org", ["h2"])

    async def scenario() -> None:
        conn, client = accepted_pair()
        with conn, client:
            peeking = asyncio.create_task(peek_client_hello(conn, timeout_s=5.0))
            client.sendall(hello[:2])
            await wait_for(lambda: low_water_mark(conn) == 5, "the header's low-water mark")
            client.sendall(hello[2:5])
            await wait_for(lambda: low_water_mark(conn) == len(hello), "the record's mark")
            before = conn.recvs
            for i in range(5, len(hello) - 1):  # one segment per byte
                client.send(hello[i : i + 1])
                await asyncio.sleep(0)  # let the loop poll: a wake-up per segment would show
            assert not peeking.done()
            client.sendall(hello[-1:] + b"next")
            result = await peeking
            assert result == ClientHello(sni="slow.example.org", alpn=(b"h2",), size=len(hello))
            # Hundreds of segments, a handful of wake-ups: the record's mark held.
            assert conn.recvs - before <= 3
            assert low_water_mark(conn) == 1
            conn.setblocking(True)
            assert conn.recv(len(hello) + 4, socket.MSG_WAITALL) == hello + b"next"

    run(scenario())


def test_a_peek_refuses_what_is_not_tls_and_leaves_it_in_the_socket(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def scenario() -> None:
        conn, client = accepted_pair()
        with conn, client:
            client.sendall(b"GET / HTTP/1.1\r\n")
            with pytest.raises(NotTls, match="first byte 0x47"):
                await peek_client_hello(conn, timeout_s=5.0)
            assert conn.recv(100, socket.MSG_PEEK).startswith(b"GET / ")

    run(scenario())


def test_a_peek_ends_when_the_client_closes_in_the_middle(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    hello = python_hello("gone.example.org")

    async def scenario() -> None:
        conn, client = accepted_pair()
        with conn:
            peeking = asyncio.create_task(peek_client_hello(conn, timeout_s=5.0))
            client.sendall(hello[:100])
            await wait_for(lambda: low_water_mark(conn) == len(hello), "the record's mark")
            client.close()
            with pytest.raises(IncompleteHello, match="the stream ended 100 bytes into the hello"):
                await peeking
            assert low_water_mark(conn) == 1

    run(scenario())


def test_a_peek_ends_at_once_on_an_empty_stream(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def scenario() -> None:
        conn, client = accepted_pair()
        with conn:
            client.close()
            with pytest.raises(IncompleteHello, match="ended 0 bytes into"):
                await peek_client_hello(conn, timeout_s=5.0)

    run(scenario())


def test_a_hello_that_never_ends_times_out(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    hello = python_hello("never.example.org")

    async def scenario() -> None:
        conn, client = accepted_pair()
        with conn, client:
            client.sendall(hello[:-1])
            started = time.monotonic()
            with pytest.raises(HelloTimeout, match=r"no complete ClientHello within 0\.2 s"):
                await peek_client_hello(conn, timeout_s=0.2)
            assert time.monotonic() - started < 2.0
            assert low_water_mark(conn) == 1
            assert conn.recv(len(hello), socket.MSG_PEEK) == hello[:-1]

    run(scenario())


# --- read_client_hello -----------------------------------------------------------------------


def test_read_takes_the_hello_and_leaves_the_rest_in_the_reader(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    hello = python_hello("read.example.org", ["acme-tls/1"])

    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(hello[:7])
        reading = asyncio.create_task(read_client_hello(reader, timeout_s=5.0))
        await asyncio.sleep(0)
        for i in range(7, len(hello)):
            reader.feed_data(hello[i : i + 1])
        reader.feed_data(b"after")
        reader.feed_eof()
        result, replay = await reading
        assert result == ClientHello(sni="read.example.org", alpn=(b"acme-tls/1",), size=len(hello))
        assert replay == hello
        assert await reader.read() == b"after"

    run(scenario())


def test_read_of_a_stream_that_ends_early_is_incomplete(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(python_hello("x.example.org")[:50])
        reader.feed_eof()
        with pytest.raises(IncompleteHello, match="the stream ended 50 bytes into the hello"):
            await read_client_hello(reader, timeout_s=5.0)

    run(scenario())


def test_read_of_a_silent_stream_times_out(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def scenario() -> None:
        with pytest.raises(HelloTimeout, match=r"within 0\.05 s"):
            await read_client_hello(asyncio.StreamReader(), timeout_s=0.05)

    run(scenario())


def test_the_reader_used_by_the_helpers_is_the_sans_io_one() -> None:
    # The helpers add no parsing of their own: the same reader, the same answer.
    hello = python_hello("same.example.org")
    assert HelloReader().feed(hello) == ClientHello(
        sni="same.example.org", alpn=(), size=len(hello)
    )


# --- the installed clients, live ---------------------------------------------------------


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_the_installed_client_hello_reads_as_the_captured_one(client: str) -> None:
    # The committed captures could age; today's openssl and curl must read the same.
    if shutil.which(CLIENTS[client][0]) is None:
        pytest.skip(f"{CLIENTS[client][0]} is not installed")
    live = capture(CLIENTS[client])
    name = "curl-http11-upper-case" if client == "curl-http11" else client
    _, sni, alpn = REAL[name]
    assert HelloReader().feed(live) == ClientHello(sni=sni, alpn=alpn, size=len(live))
