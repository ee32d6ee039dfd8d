"""The byte-stream interface the relay moves data over, and its asyncio adapter.

The relay never sees sockets or SSH channels: it sees ``ByteStream``. The
router's browser side is a TCP/TLS asyncio stream (``ReaderWriterStream``,
here), its app side an SSH channel (``_channel_stream.ChannelStream``, the
channel's session itself); the auth helper's app side is plain TCP.

Back-pressure: ``send_all`` returns only once the transport below has drained
under its high-water mark, so a slow reader on one side stops the relay from
reading the other side, and the SSH window (or TCP window) pushes back on the
sender. Nothing here buffers more than one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Final, Protocol

# Reading the front socket in 256 KiB chunks measured +25% bulk throughput
# over 64 KiB (see shared/design.md); the memory is per active read only.
READ_CHUNK_BYTES: Final = 256 * 1024

# struct linger {on, seconds}: close with a reset, dropping unsent data.
_LINGER_ZERO: Final = struct.pack("ii", 1, 0)


class ByteStream(Protocol):
    """A bidirectional byte stream with back-pressure and half-close."""

    async def receive(self) -> bytes:
        """Up to one chunk of bytes; ``b""`` at end of stream."""
        ...

    async def send_all(self, data: bytes) -> None:
        """Write ``data`` and wait until the transport has room again."""
        ...

    def write(self, data: bytes) -> None:
        """Queue ``data`` without waiting; call ``drain`` when ``must_drain()``."""
        ...

    def must_drain(self) -> bool:
        """True when the transport holds enough unsent data that the writer should wait."""
        ...

    async def drain(self) -> None:
        """Wait until the transport has room again."""
        ...

    async def send_eof(self) -> None:
        """Half-close: no more data from this side (no-op where unsupported)."""
        ...

    def close(self) -> None:
        """Close both directions now; pending data may be dropped."""
        ...

    def abort(self) -> None:
        """Close at once, dropping unsent data (TCP: a reset): for a peer that stopped reading."""
        ...


class _Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def get_extra_info(self, name: str, default: object = None) -> object: ...
    async def drain(self) -> None: ...
    def can_write_eof(self) -> bool: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...


class ReaderWriterStream:
    """``ByteStream`` over an asyncio-style (reader, writer) pair."""

    __slots__ = ("_buffered", "_chunk", "_close_linger_s", "_reader", "_writer", "label")

    def __init__(
        self,
        reader: _Reader,
        writer: _Writer,
        *,
        label: str,
        chunk: int = READ_CHUNK_BYTES,
        close_linger_s: float | None = None,
    ) -> None:
        """``close_linger_s``: how long a closed stream may still flush queued bytes
        to a peer that does not read them; then it is reset (None: for ever)."""
        self._reader = reader
        self._writer = writer
        self._chunk = chunk
        self._close_linger_s = close_linger_s
        self.label = label
        # How much is held unsent: the asyncio transport's buffer. A writer
        # without one always goes through its own drain.
        # (StreamWriter.get_extra_info("transport") is None: the attribute it is.)
        transport = getattr(writer, "transport", None)
        self._buffered = getattr(transport, "get_write_buffer_size", None)

    def __repr__(self) -> str:
        return f"<ReaderWriterStream {self.label}>"

    async def receive(self) -> bytes:
        return await self._reader.read(self._chunk)

    async def send_all(self, data: bytes) -> None:
        self.write(data)
        if self.must_drain():
            await self._writer.drain()

    def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError(f"{self.label} is closed")
        self._writer.write(data)

    def must_drain(self) -> bool:
        # A transport that sent everything needs no wait: skipping the
        # drain coroutine (and the caller's timeout) is most of a small response.
        return self._buffered is None or self._buffered() > 0

    async def drain(self) -> None:
        await self._writer.drain()

    async def send_eof(self) -> None:
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()
        transport = getattr(self._writer, "transport", None)
        linger = self._close_linger_s
        if linger is not None and transport is not None and transport.get_write_buffer_size():
            # asyncio keeps a closing transport (and its descriptor) until the
            # peer has read what is queued, however long that takes.
            loop = asyncio.get_running_loop()
            loop.call_later(linger, self._abort_if_still_flushing, transport)

    def _abort_if_still_flushing(self, transport: asyncio.WriteTransport) -> None:
        # Still data queued means still open: the socket is ours to reset
        # (once flushed and closed, its descriptor may belong to someone else).
        if transport.get_write_buffer_size() > 0:
            self.abort()

    def abort(self) -> None:
        # asyncio's StreamWriter has its transport; a writer without one is closed.
        transport = getattr(self._writer, "transport", None)
        if transport is None:
            self._writer.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: the kernel resets the connection and frees what it still
            # holds for the peer, instead of keeping it, orphaned, for a reader
            # that will never come (nginx's reset_timedout_connection).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        transport.abort()


async def open_tcp_stream(host: str, port: int, *, label: str) -> ReaderWriterStream:
    """A ``ByteStream`` to ``host:port`` over TCP (the auth helper's upstream)."""
    reader, writer = await asyncio.open_connection(host, port, limit=READ_CHUNK_BYTES)
    return ReaderWriterStream(reader, writer, label=label)
