"""``ReaderWriterStream``: when it waits to drain, and how it ends a connection.

Draining: the writers are small recording classes shaped like asyncio's
``StreamWriter`` (a ``transport``), or with none; a stream waits only when
something is left unsent. (SSH channels are ``ChannelStream``s:
``test_channel_stream``.)

Ending: on a real loopback socket (the relay's other tests use memory pipes),
a stream closed (or aborted) while the peer reads nothing must not keep its
descriptor and queued bytes for ever. Plain functions driving asyncio under a
hard deadline, as in ``test_relay``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from hostmux.relay import ReaderWriterStream

from .asyncio_bounded import run as bounded_run

# Far more than loopback's kernel buffers take: most of it stays in asyncio's.
QUEUED_BYTES = 64 * 1024 * 1024
LINGER_S = 0.05
DEADLINE_S = 20.0


def run(scenario: Coroutine[Any, Any, None]) -> None:
    bounded_run(scenario, DEADLINE_S)


@dataclass
class Pair:
    stream: ReaderWriterStream  # the router's end
    writer: asyncio.StreamWriter  # ... and its asyncio writer
    peer_reader: asyncio.StreamReader  # the browser's end, which reads only when told
    peer_writer: asyncio.StreamWriter
    server: asyncio.Server

    async def aclose(self) -> None:
        self.peer_writer.close()
        self.server.close()
        await self.server.wait_closed()


async def connected_pair(close_linger_s: float | None) -> Pair:
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    accepted = asyncio.get_running_loop().create_future()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peer_reader, peer_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await accepted
    stream = ReaderWriterStream(reader, writer, label="test", close_linger_s=close_linger_s)
    return Pair(stream, writer, peer_reader, peer_writer, server)


async def read_until_reset(reader: asyncio.StreamReader) -> int:
    """Bytes read before the connection was reset (fails on a clean EOF)."""
    received = 0
    try:
        while chunk := await reader.read(1024 * 1024):
            received += len(chunk)
    except ConnectionResetError:
        return received
    raise AssertionError(f"a clean end after {received} bytes, not a reset")


def test_closed_stream_that_cannot_flush_is_reset_after_the_linger() -> None:
    async def scenario() -> None:
        pair = await connected_pair(LINGER_S)
        pair.stream.write(b"x" * QUEUED_BYTES)
        assert pair.stream.must_drain()
        pair.stream.close()  # the peer reads nothing: the queued bytes cannot go
        await pair.writer.wait_closed()  # ... and yet the transport ends
        assert await read_until_reset(pair.peer_reader) < QUEUED_BYTES
        await pair.aclose()

    run(scenario())


def test_closed_stream_that_flushes_in_time_ends_cleanly() -> None:
    async def scenario() -> None:
        pair = await connected_pair(DEADLINE_S)
        pair.stream.write(b"y" * QUEUED_BYTES)
        pair.stream.close()
        assert len(await pair.peer_reader.read()) == QUEUED_BYTES  # all of it, then EOF
        await pair.writer.wait_closed()
        await pair.aclose()

    run(scenario())


def test_aborted_stream_is_reset_at_once() -> None:
    async def scenario() -> None:
        pair = await connected_pair(None)
        pair.stream.write(b"z" * QUEUED_BYTES)
        pair.stream.abort()
        await pair.writer.wait_closed()
        assert await read_until_reset(pair.peer_reader) < QUEUED_BYTES
        await pair.aclose()

    run(scenario())


# --- when to drain ---------------------------------------------------------------------------


class Reader:
    async def read(self, n: int = -1) -> bytes:
        return b""


class Buffer:
    """What holds unsent bytes: an asyncio transport."""

    def __init__(self) -> None:
        self.unsent = 0

    def get_write_buffer_size(self) -> int:
        return self.unsent


class Writer:
    """A writer without a transport: always drains."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False


class TcpWriter(Writer):
    def __init__(self) -> None:
        super().__init__()
        self.transport = Buffer()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.transport if name == "transport" else default


def test_a_tcp_writer_drains_only_with_bytes_unsent() -> None:
    writer = TcpWriter()
    stream = ReaderWriterStream(Reader(), writer, label="test")
    assert stream.must_drain() is False
    writer.transport.unsent = 1
    assert stream.must_drain() is True


def test_a_writer_without_a_buffer_to_look_at_always_drains() -> None:
    stream = ReaderWriterStream(Reader(), Writer(), label="test")
    assert stream.must_drain() is True
