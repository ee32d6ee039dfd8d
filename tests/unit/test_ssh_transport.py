"""``CoalescingTransport``: one loop turn's writes leave as one write, in order.

Plain functions driving asyncio scenarios with ``asyncio.run`` (the suite's
async tests run under trio). The wrapped transport is a small recording
class. "The end of the loop turn" is reached by awaiting a future resolved by
a ``call_soon`` queued after the writes: asyncio runs ``call_soon`` callbacks
in order, so the flush has run by then — an ordering, not a wait. The last
test runs ``CoalescingListener`` and ``CoalescingConnector`` against each other
over loopback TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from hostmux.tunnel.coalescing import CoalescingConnector, CoalescingListener, CoalescingTransport

from .asyncio_bounded import run

T = TypeVar("T")


class RecordingTransport(asyncio.Transport):
    """Records what reaches the socket: writes, EOF, close and abort, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[object] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.log.append(bytes(data))

    def write_eof(self) -> None:
        self.log.append("eof")

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.log.append("close")
        self.closing = True

    def abort(self) -> None:
        self.log.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 2222)}.get(name, default)


async def end_of_turn() -> None:
    """Resolves after every callback queued so far (the pending flush included)."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


def test_writes_of_one_turn_leave_as_one_write_in_order() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        corked = CoalescingTransport(inner)
        corked.write(b"ignore-packet|")
        corked.write(bytearray(b"data-packet|"))
        corked.writelines([b"a", memoryview(b"b")])
        assert inner.log == []  # nothing leaves before the turn ends
        assert corked.get_write_buffer_size() == len(b"ignore-packet|data-packet|ab") + 7
        await end_of_turn()
        assert inner.log == [b"ignore-packet|data-packet|ab"]
        corked.write(b"next turn")
        await end_of_turn()
        assert inner.log == [b"ignore-packet|data-packet|ab", b"next turn"]

    run(scenario())


def test_close_and_write_eof_send_what_is_pending_first() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        corked = CoalescingTransport(inner)
        corked.write(b"last words")
        corked.write_eof()
        assert inner.log == [b"last words", "eof"]
        corked.write(b"disconnect")
        corked.close()
        await end_of_turn()  # the flush queued by the write finds nothing left to send
        assert inner.log == [b"last words", "eof", b"disconnect", "close"]

    run(scenario())


def test_abort_drops_what_is_pending() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        corked = CoalescingTransport(inner)
        corked.write(b"never sent")
        corked.abort()
        await end_of_turn()
        assert inner.log == ["abort"]

    run(scenario())


def test_writes_to_a_transport_closed_underneath_are_dropped() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        corked = CoalescingTransport(inner)
        corked.write(b"too late")
        inner.closing = True  # the peer reset the connection meanwhile
        await end_of_turn()
        assert inner.log == []
        assert corked.is_closing()
        assert corked.get_extra_info("peername") == ("127.0.0.1", 2222)

    run(scenario())


class Echo(asyncio.Protocol):
    """Server side: sends back what it receives (through the transport it was given)."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert isinstance(self.transport, asyncio.WriteTransport)
        self.transport.write(data)


class Greeter(asyncio.Protocol):
    """Client side: three writes in one turn, then collects the echo."""

    def __init__(self, expected: int) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.received = b""
        self._expected = expected
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        assert isinstance(transport, asyncio.WriteTransport)
        for part in (b"SSH-2.0-", b"hello", b"\r\n"):
            transport.write(part)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self._expected and not self.done.done():
            self.done.set_result(self.received)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[int, list[Echo]]]:
    """A ``CoalescingListener`` on a loopback port: (the port, the ``Echo`` of each connection)."""
    servers: list[Echo] = []

    def serve(_host: str, _port: int) -> Echo:
        servers.append(Echo())
        return servers[-1]

    server = await CoalescingListener().create_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], servers
    finally:
        server.close()
        await server.wait_closed()


def test_listener_and_connector_hand_real_sockets_to_the_protocol_wrapped() -> None:
    """Loopback TCP both ways: each side's protocol gets a CoalescingTransport, bytes in order."""

    async def scenario() -> tuple[bytes, bool, bool, tuple[str, int]]:
        async with echo_server() as (port, servers):
            greeter = Greeter(len(b"SSH-2.0-hello\r\n"))
            transport, protocol = await CoalescingConnector().create_connection(
                lambda: greeter, "127.0.0.1", port
            )
            try:
                echoed = await greeter.done
                peer = greeter.transport.get_extra_info("peername") if greeter.transport else None
            finally:
                transport.close()
        assert protocol is greeter
        return (
            echoed,
            isinstance(greeter.transport, CoalescingTransport),
            isinstance(servers[0].transport, CoalescingTransport),
            peer[:2] if peer else ("", 0),
        )

    echoed, client_wrapped, server_wrapped, peer = run(scenario())
    assert echoed == b"SSH-2.0-hello\r\n"
    assert client_wrapped and server_wrapped
    assert peer[0] == "127.0.0.1"


class PingPong(asyncio.Protocol):
    """Client side: one small write per echo received, ``rounds`` times (as a handshake)."""

    def __init__(self, rounds: int) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.echoes: list[bytes] = []
        self._rounds = rounds
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        transport.write(b"0")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.echoes.append(data)
        if len(self.echoes) == self._rounds:
            self.done.set_result(None)
        else:
            self.transport.write(str(len(self.echoes)).encode())


def test_the_handshake_reads_pass_through_then_the_socket_is_handed_over() -> None:
    """Past the first reads (acknowledged at once), the SSH side gets the socket itself."""

    async def scenario() -> tuple[list[bytes], bool]:
        async with echo_server() as (port, servers):
            client = PingPong(rounds=20)  # more reads than the handshake's quick ACKs
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: client, "127.0.0.1", port
            )
            try:
                await client.done
                server_side = servers[0].transport
                assert isinstance(server_side, CoalescingTransport)
                handed_over = server_side.get_protocol() is servers[0]
            finally:
                transport.close()
        return client.echoes, handed_over

    echoes, handed_over = run(scenario())
    assert echoes == [str(n).encode() for n in range(20)]
    assert handed_over
