"""``ChannelStream``: an SSH channel as the relay's ``ByteStream``.

A real asyncssh server and client over loopback in one process (``asyncio.run``
under a hard deadline; the suite's async tests run under trio). The client
opens a ``direct-tcpip`` channel whose session is a ``ChannelStream`` — the
same class the router uses for ``forwarded-tcpip`` channels, from the other
end — and the server's side of the channel is a small recording session.
Conditions are waited for on events, under the deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import pytest

from router.ssh.channel import ChannelStream

from .asyncio_bounded import run as bounded_run

DEADLINE_S = 20.0
WINDOW = 256 * 1024


def run(scenario: Coroutine[Any, Any, None]) -> None:
    bounded_run(scenario, DEADLINE_S)


@dataclass
class FarEnd(asyncssh.SSHTCPSession[bytes]):
    """The server's end of the channel: records what it gets, writes when told."""

    received: bytearray = field(default_factory=bytearray)
    eof: bool = False
    chan: Any = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.received += data
        self.changed.set()

    def eof_received(self) -> bool:
        self.eof = True
        self.changed.set()
        return True

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (bounded by the scenario's deadline) until ``condition`` holds."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()


class Watched(ChannelStream):
    """A ``ChannelStream`` that notes the most it held unread, and when it paused."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.most_unread = 0
        self.paused = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        super().data_received(data, datatype)
        self.most_unread = max(self.most_unread, self._unread)
        if self._paused:
            self.paused.set()


@dataclass
class Setup:
    stream: Watched
    far: FarEnd
    conn: asyncssh.SSHClientConnection
    server: asyncssh.SSHAcceptor


async def with_channel(scenario: Callable[[Setup], Awaitable[None]]) -> None:
    far = FarEnd()

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

        def connection_requested(self, *_: object) -> FarEnd:
            return far

    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[key], server_factory=Server)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="t") as conn:
            _, stream = await conn.create_connection(
                lambda: Watched("test"), "app", 80, window=WINDOW
            )
            assert isinstance(stream, Watched)
            assert far.chan is not None
            await scenario(Setup(stream, far, conn, server))
    finally:
        server.close()


def test_bytes_go_both_ways_in_order() -> None:
    async def scenario(s: Setup) -> None:
        await s.stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
        await s.far.until(lambda: bytes(s.far.received) == b"GET / HTTP/1.1\r\n\r\n")
        s.far.chan.write(b"HTTP/1.1 200 OK\r\n")
        s.far.chan.write(b"content-length: 0\r\n\r\n")
        got = b""
        while len(got) < 38:
            got += await s.stream.receive()
        assert got == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    run(with_channel(scenario))


def test_an_unread_channel_pushes_back_through_the_ssh_window() -> None:
    """Nothing read: past its high-water mark the stream pauses the channel, so no
    window is opened and the far end is held back; it never holds more than that
    and one window unread, and everything arrives, intact, once read."""
    payload = os.urandom(4 * 1024 * 1024)

    async def scenario(s: Setup) -> None:
        s.far.chan.write(payload)
        s.far.chan.write_eof()
        await s.stream.paused.wait()
        assert s.far.chan.get_write_buffer_size() > 0  # held back
        digest, size = hashlib.sha256(), 0
        while chunk := await s.stream.receive():
            digest.update(chunk)
            size += len(chunk)
        assert size == len(payload)
        assert digest.digest() == hashlib.sha256(payload).digest()
        assert s.stream.high_water == WINDOW
        assert s.stream.most_unread <= 2 * WINDOW + 64 * 1024, s.stream.most_unread

    run(with_channel(scenario))


def test_eof_from_the_far_end_is_a_half_close() -> None:
    async def scenario(s: Setup) -> None:
        s.far.chan.write(b"bye")
        s.far.chan.write_eof()
        assert await s.stream.receive() == b"bye"
        assert await s.stream.receive() == b""
        await s.stream.send_all(b"still talking")  # our direction is still open
        await s.stream.send_eof()
        await s.far.until(lambda: s.far.eof)
        assert bytes(s.far.received) == b"still talking"

    run(with_channel(scenario))


def test_a_lost_connection_is_a_connection_reset() -> None:
    async def scenario(s: Setup) -> None:
        reading = asyncio.ensure_future(s.stream.receive())
        # The far end's SSH connection is dropped (as when a tunnel client is killed).
        s.far.chan.get_extra_info("connection").abort()
        with pytest.raises(ConnectionResetError, match="test"):
            await reading
        with pytest.raises(ConnectionResetError):
            await s.stream.send_all(b"x")

    run(with_channel(scenario))


def test_writes_after_close_are_refused() -> None:
    async def scenario(s: Setup) -> None:
        s.stream.close()
        with pytest.raises(ConnectionResetError):
            s.stream.write(b"x")
        assert await s.stream.receive() == b""  # the channel's close reads as EOF

    run(with_channel(scenario))
