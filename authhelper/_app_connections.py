"""The helper's connections to the app: opened fresh, or idle ones kept for the next browser.

Each browser connection reaches the helper as its own TCP connection (one SSH
channel each), and a browser opens and closes them all the time; without a
pool each would cost the app a TCP connect, as nginx's upstream ``keepalive``
avoids. The rules (the relay's side is ``hostmux.relay.relay`` rule 7):

1. A connection comes back only from a browser connection that ended between
   two requests (its last response complete, nothing of another under way),
   and is lent to one browser connection at a time: ``take`` removes it.
2. At most ``max_idle`` are kept; more are closed. An idle one is closed after
   ``IDLE_TIMEOUT_S``, and at once when the app closes it or sends anything
   while idle (the connection's own protocol tells the pool, as nginx's
   keepalive close handler does): what comes unasked cannot belong to the
   next request.
3. Only a request that may be sent twice starts on a pooled connection, so a
   connection the app closed at the same moment costs one retry on a fresh
   one, never an error (the relay's retry of idempotent requests).
4. On shutdown every idle connection is closed.

Each connection is an asyncio ``Protocol`` that is the relay's ``ByteStream``
(``AppStream``), as the router's SSH channel is (``router.ssh.channel``): what
the app sends is queued as it came, or handed to a ``sink`` (the relay's
express path parses a small response straight from the socket's callback,
without waking a task), and an idle one is watched by that same callback and
one timer: no task per idle connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from hostmux.relay import READ_CHUNK_BYTES, UpstreamUnavailable

# Held idle at most this long: long enough to bridge the gaps between a
# browser's connections, short enough not to hold the app's sockets for nothing.
IDLE_TIMEOUT_S = 30.0

# struct linger {on, seconds}: close with a reset, dropping unsent data.
_LINGER_ZERO = struct.pack("ii", 1, 0)


class AppStream(asyncio.Protocol):
    """One TCP connection to the app: its protocol and the relay's ``ByteStream``.

    - what arrives is kept as it came (a deque of chunks) and handed out in
      order, up to ``READ_CHUNK_BYTES`` per ``receive``; with twice that unread
      the transport stops reading (as ``StreamReader`` does) and resumes below it;
    - ``sink``: while it is set and nothing is queued, what arrives goes to it
      instead (``b""`` for the app's EOF or a lost connection, after recording it);
    - ``on_idle_event``: while the connection is idle in the pool, anything the
      app does (bytes, EOF, a reset) is told to it instead (rule 2).

    Error handling: after the connection was lost with an error, ``receive`` and
    ``drain`` raise ``ConnectionResetError``; the app's EOF reads as ``b""``.
    """

    __slots__ = (
        "_chunks", "_closed", "_drain_waiter", "_eof", "_lost", "_read_paused", "_read_waiter",
        "_unread", "_write_paused", "label", "on_idle_event", "sink", "transport",
    )  # fmt: skip

    def __init__(self, label: str) -> None:
        self.label = label
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._unread = 0
        self._read_paused = False
        self._eof = False
        self._lost: BaseException | None = None
        self._closed = False
        self._write_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.on_idle_event: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<AppStream {self.label}>"

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but quack like one)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.on_idle_event is not None:
            self.on_idle_event()  # unasked: the pool closes it (rule 2)
            return
        sink = self.sink
        if sink is not None and not self._chunks:
            sink(data)
            return
        self._chunks.append(data)
        self._unread += len(data)
        if self._unread > 2 * READ_CHUNK_BYTES and not self._read_paused:
            assert self.transport is not None
            self._read_paused = True
            self.transport.pause_reading()
        _wake(self._read_waiter)

    def eof_received(self) -> bool:
        self._eof = True
        _wake(self._read_waiter)
        if self.on_idle_event is not None:
            self.on_idle_event()
        elif self.sink is not None:
            self.sink(b"")
        return True  # half-open: the request (a WebSocket splice's data) may still go up

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._lost = exc
        _wake(self._read_waiter)
        _wake(self._drain_waiter)
        if self.on_idle_event is not None:
            self.on_idle_event()
        elif self.sink is not None:
            self.sink(b"")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    @property
    def quiet(self) -> bool:
        """Nothing unread, no EOF, no loss, nothing unsent: a ``sink`` may take what comes next."""
        return not self._chunks and not self._eof and not self._write_paused and not self._closed

    # -- ByteStream -----------------------------------------------------------------

    async def receive(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._eof:
                if self._lost is not None:
                    raise ConnectionResetError(f"{self.label}: {self._lost}")
                return b""
            waiter = self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None
        data = chunks.popleft() if len(chunks) == 1 else _take(chunks)
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
        if transport is None or self._closed or transport.is_closing():
            raise ConnectionResetError(f"{self.label} is closed")
        transport.write(data)

    def must_drain(self) -> bool:
        transport = self.transport
        return transport is None or transport.get_write_buffer_size() > 0

    async def drain(self) -> None:
        while self._write_paused and self._lost is None and not self._closed:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self._lost is not None:
            raise ConnectionResetError(f"{self.label}: {self._lost}")
        if self.transport is None or self._closed or self.transport.is_closing():
            await asyncio.sleep(0)  # as StreamWriter.drain: let connection_lost run
            if self._lost is not None or self._closed:
                raise ConnectionResetError(f"{self.label} is closed")

    async def send_eof(self) -> None:
        transport = self.transport
        if (
            transport is not None
            and not self._closed
            and transport.can_write_eof()
            and not transport.is_closing()
        ):
            transport.write_eof()

    def close(self) -> None:
        self._closed = True
        self.sink = None
        self.on_idle_event = None
        if self.transport is not None:
            self.transport.close()  # what is queued still goes to the app

    def abort(self) -> None:
        self._closed = True
        self.sink = None
        self.on_idle_event = None
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a reset, as for the browser's side
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        transport.abort()


class AppConnections:
    """Opens connections to ``host:port`` and keeps up to ``max_idle`` idle ones (rules above)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_idle: int,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._label = f"app:{host}:{port}"
        self._max_idle = max_idle
        self._idle_timeout_s = idle_timeout_s
        self._on_open = on_open  # tests count the connections opened
        # Each idle connection and the timer that closes it (newest last).
        self._idle: dict[AppStream, asyncio.TimerHandle] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<AppConnections {self._host}:{self._port} idle={len(self._idle)}>"

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def open(self) -> AppStream:
        """A fresh connection (``Destination.open``); UpstreamUnavailable if the app refuses."""
        loop = asyncio.get_running_loop()
        label = self._label
        try:
            _, stream = await loop.create_connection(
                lambda: AppStream(label), self._host, self._port
            )
        except OSError as exc:
            raise UpstreamUnavailable(f"the app is not answering ({exc.strerror or exc})") from None
        if self._on_open is not None:
            self._on_open()
        return stream

    async def take(self) -> AppStream | None:
        """The most recently idle connection still open, now the caller's alone (rule 1)."""
        while self._idle:
            stream, timer = self._idle.popitem()
            timer.cancel()
            stream.on_idle_event = None
            if stream.quiet:
                return stream
            stream.close()  # (not reached: an idle event closes it at once; kept as a guard)
        return None

    def give(self, stream: Any) -> None:
        """Keep ``stream`` idle for the next browser connection, or close it (rule 2)."""
        if (
            self._closed
            or len(self._idle) >= self._max_idle
            or not isinstance(stream, AppStream)
            or not stream.quiet
        ):
            stream.close()
            return
        stream.sink = None
        stream.on_idle_event = lambda: self._drop(stream)
        loop = asyncio.get_running_loop()
        self._idle[stream] = loop.call_later(self._idle_timeout_s, self._drop, stream)

    def _drop(self, stream: AppStream) -> None:
        """Close an idle ``stream``: its time is up, or the app closed it or spoke unasked."""
        timer = self._idle.pop(stream, None)
        if timer is not None:
            timer.cancel()
        stream.close()

    def close(self) -> None:
        """Shutdown: close every idle connection (rule 4)."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for stream, timer in idle.items():
            timer.cancel()
            stream.close()


def _wake(waiter: asyncio.Future[Any] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _take(chunks: deque[bytes]) -> bytes:
    """What is unread, up to one read's worth, as one piece."""
    taken: list[bytes] = []
    size = 0
    while chunks and size < READ_CHUNK_BYTES:
        chunk = chunks.popleft()
        taken.append(chunk)
        size += len(chunk)
    return b"".join(taken)
