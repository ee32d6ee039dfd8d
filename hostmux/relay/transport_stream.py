"""A browser connection as an asyncio ``Protocol`` that is the relay's ``ByteStream`` too.

asyncio's ``StreamReader`` / ``StreamWriter`` pair (what ``start_server`` hands
out) serves any use; the relay reads one chunk at a time from one task and
writes whole responses. ``TransportStream`` is the connection's protocol and
its ``ByteStream`` at once, as ``router.ssh.channel.ChannelStream`` is for an
SSH channel:

- what arrives is kept as it came (a list of chunks: an idle connection holds
  it empty, 56 bytes against a deque's 760) and handed out in
  order, up to ``READ_CHUNK_BYTES`` per ``receive``; with twice that unread
  the transport stops reading (as ``StreamReader`` does at twice its limit)
  and resumes below it, so the peer's TCP window is the back-pressure;
- writes go to the transport; ``must_drain`` says whether it holds unsent
  bytes, and ``drain`` waits while it has paused writing (above its high-water
  mark);
- ``express``: while the relay's task waits for the next request, what
  arrives may be handed to this callback first (``HttpRelay``'s express path:
  a small request answered from callbacks, without waking the task); it
  returns whether it took the bytes. ``kick`` wakes the waiting task without
  bytes (``Kicked`` raised from ``receive``) when the express path hands the
  rest of its work back.
- ``unpark``: while the relay's task has ended with the connection idle
  (``HttpRelay``'s parking: the express path serves it from callbacks), what
  would wake a waiting reader (bytes the express path did not take, EOF, a
  loss, ``kick``) calls this instead, once, to start the task again.

Error handling: after the connection was lost with an error, ``receive`` and
``drain`` raise ``ConnectionResetError``; a peer's EOF reads as ``b""``.
Resource handling: ``close`` lets queued bytes go out for at most
``close_linger_s``, then resets the connection; ``abort`` resets it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

from hostmux.relay.streams import _LINGER_ZERO, READ_CHUNK_BYTES


class Kicked(Exception):
    """Raised from ``receive`` when ``kick`` woke the reader without bytes."""


class TransportStream(asyncio.Protocol):
    """One browser connection: the protocol on its transport and the relay's ``ByteStream``."""

    # Slots: every idle keep-alive connection holds one (no per-instance dict).
    __slots__ = (
        "_chunks", "_close_linger_s", "_drain_waiter", "_eof", "_kicked", "_lost", "_on_made",
        "_read_paused", "_read_waiter", "_unread", "_write_paused", "express", "hold", "label",
        "transport", "unpark",
    )  # fmt: skip

    def __init__(
        self,
        label: str,
        *,
        on_made: Callable[[TransportStream], None],
        close_linger_s: float | None = None,
    ) -> None:
        self.label = label
        # Starts the relay's task once the connection is up (then dropped: it holds
        # the front door's arguments, ~0.3 KiB a connection).
        self._on_made: Callable[[TransportStream], None] | None = on_made
        self._close_linger_s = close_linger_s
        self.transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._unread = 0
        self._read_paused = False
        self._eof = False
        self._lost: BaseException | None = None
        self._write_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._kicked = False
        # While the express path has a request in flight: arrivals are queued
        # without waking the reader (the express path wakes it when it is done).
        self.hold = False
        # Called with what arrives while a reader waits and nothing is queued
        # (True: it took the bytes). Set by the relay for its express path.
        self.express: Callable[[bytes], bool] | None = None
        # Set while the relay's task is parked (ended): called instead of waking it.
        self.unpark: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<TransportStream {self.label}>"

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but quack like one)
        self.transport = cast(asyncio.Transport, transport)
        on_made, self._on_made = self._on_made, None
        if on_made is not None:
            on_made(self)

    def data_received(self, data: bytes) -> None:
        express = self.express
        waiting = (
            (self._read_waiter is not None or self.unpark is not None)
            and not self._chunks
            and not self.hold
        )
        if express is not None and waiting and express(data):
            return
        self._chunks.append(data)
        self._unread += len(data)
        if self._unread > 2 * READ_CHUNK_BYTES and not self._read_paused:
            assert self.transport is not None
            self._read_paused = True
            self.transport.pause_reading()
        if not self.hold:
            self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        if not self.hold:
            self._wake_reader()
        # Half-open: the response may still go out (TLS has no half-close).
        return self.transport is None or self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._lost = exc
        self._wake_reader()
        _wake(self._drain_waiter)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    # -- express --------------------------------------------------------------------

    @property
    def has_queued(self) -> bool:
        """Bytes or an EOF the reader has not taken yet."""
        return bool(self._chunks) or self._eof

    def kick(self) -> None:
        """Wake the waiting reader: its ``receive`` raises ``Kicked`` if nothing is queued."""
        self._kicked = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        """Wake the reader waiting in ``receive``; a parked relay's task is started again."""
        unpark = self.unpark
        if unpark is not None:
            self.unpark = None
            unpark()
        else:
            _wake(self._read_waiter)

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what is queued (taken by a reader that had to stop)."""
        if data:
            self._chunks.insert(0, data)
            self._unread += len(data)

    # -- ByteStream -----------------------------------------------------------------

    async def receive(self) -> bytes:
        chunks = self._chunks
        self._kicked = False
        while not chunks:
            if self._kicked:
                self._kicked = False
                raise Kicked()
            if self._eof:
                if self._lost is not None:
                    raise ConnectionResetError(f"{self.label}: {self._lost}")
                return b""
            waiter = self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None
        data = chunks.pop() if len(chunks) == 1 else _take(chunks)
        self._unread -= len(data)
        if self._read_paused and self._unread <= READ_CHUNK_BYTES:
            self._read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return data

    async def send_all(self, data: bytes) -> None:
        self.write(data)
        if self._write_paused:
            await self.drain()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError(f"{self.label} is closed")
        transport.write(data)

    def must_drain(self) -> bool:
        transport = self.transport
        return transport is None or transport.get_write_buffer_size() > 0

    async def drain(self) -> None:
        while self._write_paused and self._lost is None:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self._lost is not None:
            raise ConnectionResetError(f"{self.label}: {self._lost}")
        if self.transport is None or self.transport.is_closing():
            await asyncio.sleep(0)  # as StreamWriter.drain: let connection_lost run
            if self._lost is not None:
                raise ConnectionResetError(f"{self.label}: {self._lost}")

    async def send_eof(self) -> None:
        transport = self.transport
        if transport is not None and transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()

    def close(self) -> None:
        self.express = None
        transport = self.transport
        if transport is None:
            return
        transport.close()
        linger = self._close_linger_s
        if linger is not None and transport.get_write_buffer_size():
            # asyncio keeps a closing transport (and its descriptor) until the
            # peer has read what is queued, however long that takes.
            asyncio.get_running_loop().call_later(linger, self._abort_if_still_flushing)

    def _abort_if_still_flushing(self) -> None:
        # Still data queued means still open: the socket is ours to reset.
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size() > 0:
            self.abort()

    def abort(self) -> None:
        self.express = None
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: the kernel resets the connection and frees what it still
            # holds for the peer (nginx's reset_timedout_connection).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        transport.abort()


def _wake(waiter: asyncio.Future[Any] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _take(chunks: list[bytes]) -> bytes:
    """What is unread, up to one read's worth, as one piece (taken off ``chunks``)."""
    size = 0
    end = 0
    while end < len(chunks) and size < READ_CHUNK_BYTES:
        size += len(chunks[end])
        end += 1
    taken = b"".join(chunks[:end])
    del chunks[:end]
    return taken
