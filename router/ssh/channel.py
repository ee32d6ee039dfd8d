"""An SSH channel as a ``ByteStream``, fed straight by asyncssh's session callbacks.

asyncssh's ``SSHReader`` / ``SSHWriter`` serve any use: every read takes an
``asyncio.Lock``, walks a buffer list that may hold signals and exceptions,
and joins what it took; every call goes through the reader, the session and
the stream adapter. The relay needs none of it: one task reads one channel a
chunk at a time. ``ChannelStream`` is the channel's ``SSHTCPSession`` and the
relay's ``ByteStream`` at once:

- what arrives is kept as it came (a list of chunks: an idle keep-alive
  connection's channel holds it empty, 56 bytes against a deque's 760) and handed out in
  order; with a window's worth unread (the channel's receive window, as
  asyncssh's own streams do) the channel is paused, so asyncssh stops opening
  the SSH window and the tunnel client stops sending (the window is the
  back-pressure), and it resumes below half of that. (Pausing at 256 KiB
  took a listener's bulk download from ~600 to ~345 MB/s: the window did not
  reopen in time.)
- writes go to the channel; ``must_drain`` says whether the channel holds
  unsent data, and ``drain`` waits while asyncssh has paused writing (the
  peer's window is full);
- ``on_lost``: called once when the channel has ended (``router.pool`` counts
  the channels open to each member of a pool);
- EOF from the peer is a half-close (``receive`` returns ``b""``, writing
  goes on), as the WebSocket splice needs;
- ``sink``: while it is set and nothing is queued, what arrives goes to it
  instead of the queue (the relay's express path parses a response straight
  from asyncssh's callback, without waking a task); EOF and loss are
  recorded as usual and then told to it as ``b""``.

Error handling: when the SSH connection is lost under the channel (its client
was killed), reads, writes and drains raise ``ConnectionResetError``, the one
error the relay ends a connection on quietly; asyncssh's own errors do not
reach the relay. A channel closed cleanly reads as EOF.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncssh

from hostmux.relay import READ_CHUNK_BYTES
from router.ssh.lean import lean_event


class ChannelStream(asyncssh.SSHTCPSession[bytes], asyncssh.SSHUNIXSession[bytes]):
    """One SSH channel (``forwarded-tcpip`` or stream-local) as the relay's ``ByteStream``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._chunks: list[bytes] = []
        self._unread = 0
        self.high_water = 0  # the channel's receive window, once it is open
        self._paused = False
        self._eof = False
        self._lost: BaseException | None = None  # the error that ended the channel, if any
        self._closed = False  # closed by us
        self._write_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.sink: Callable[[bytes], None] | None = None
        # Called once when the channel has ended (a pool counts its member's channels).
        self.on_lost: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<ChannelStream {self.label}>"

    # -- asyncssh's session callbacks -------------------------------------------

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:  # type: ignore[override]
        self._chan = chan
        self.high_water = max(chan.get_recv_window(), READ_CHUNK_BYTES)
        # asyncssh's close event per channel: its waiters on a list, ~0.7 KiB less a channel
        # (an idle keep-alive connection keeps one; see ``router.ssh.lean``).
        lean_event(getattr(chan, "_close_event", None))

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        sink = self.sink
        if sink is not None and not self._chunks:
            sink(data)
            return
        self._chunks.append(data)
        self._unread += len(data)
        if self._unread >= self.high_water and not self._paused and self._chan is not None:
            self._paused = True
            self._chan.pause_reading()
        _wake(self._read_waiter)

    def eof_received(self) -> bool:
        self._eof = True
        _wake(self._read_waiter)
        if self.sink is not None:
            self.sink(b"")
        return True  # half-open: the other direction may go on

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()
        if exc is not None:
            self._lost = exc
        _wake(self._read_waiter)
        _wake(self._drain_waiter)
        if self.sink is not None:
            self.sink(b"")

    @property
    def quiet(self) -> bool:
        """Nothing unread, no EOF, no loss, nothing unsent: a ``sink`` may take what comes next."""
        return not self._chunks and not self._eof and not self._write_paused and not self._closed

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    # -- ByteStream --------------------------------------------------------------

    async def receive(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._eof:
                if self._lost is not None:
                    raise self._reset()
                return b""
            waiter = self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None
        data = chunks.pop() if len(chunks) == 1 else _take(chunks)
        self._unread -= len(data)
        if self._paused and self._unread < self.high_water // 2 and self._chan is not None:
            self._paused = False
            self._chan.resume_reading()
        return data

    async def send_all(self, data: bytes) -> None:
        self.write(data)
        if self._write_paused:
            await self.drain()

    def write(self, data: bytes) -> None:
        chan = self._chan
        if chan is None or self._closed or self._lost is not None:
            raise self._reset()
        try:
            chan.write(data)
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionResetError(f"{self.label}: {exc}") from None

    def must_drain(self) -> bool:
        return self._write_paused or self._lost is not None

    async def drain(self) -> None:
        while self._write_paused and self._lost is None and not self._closed:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self._lost is not None or self._closed:
            raise self._reset()

    async def send_eof(self) -> None:
        chan = self._chan
        if chan is None or self._closed or self._lost is not None or chan.is_closing():
            return
        try:
            chan.write_eof()
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionResetError(f"{self.label}: {exc}") from None

    def close(self) -> None:
        self._closed = True
        if self._chan is not None:
            self._chan.close()

    def abort(self) -> None:
        self.close()  # an SSH channel has no reset: closing drops what it still holds

    def _reset(self) -> ConnectionResetError:
        reason = self._lost if self._lost is not None else "closed"
        return ConnectionResetError(f"{self.label}: {reason}")


def _wake(waiter: asyncio.Future[Any] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _take(chunks: list[bytes]) -> bytes:
    """Everything unread, up to one read's worth, as one piece (taken off ``chunks``)."""
    size = 0
    end = 0
    while end < len(chunks) and size < READ_CHUNK_BYTES:
        size += len(chunks[end])
        end += 1
    taken = b"".join(chunks[:end])
    del chunks[:end]
    return taken
