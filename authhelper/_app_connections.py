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
   while idle (a watcher reads it, as nginx's keepalive close handler does):
   what comes unasked cannot belong to the next request.
3. Only a request that may be sent twice starts on a pooled connection, so a
   connection the app closed at the same moment costs one retry on a fresh
   one, never an error (the relay's retry of idempotent requests).
4. On shutdown every idle connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hostmux.relay import READ_CHUNK_BYTES, ByteStream, ReaderWriterStream, UpstreamUnavailable

# Held idle at most this long: long enough to bridge the gaps between a
# browser's connections, short enough not to hold the app's sockets for nothing.
IDLE_TIMEOUT_S = 30.0


class AppStream(ReaderWriterStream):
    """A TCP connection to the app, with its reader at hand for the idle watcher."""

    __slots__ = ("app_reader",)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str):
        super().__init__(reader, writer, label=label)
        self.app_reader = reader


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
        self._max_idle = max_idle
        self._idle_timeout_s = idle_timeout_s
        self._on_open = on_open  # tests count the connections opened
        self._idle: dict[AppStream, asyncio.Task[None]] = {}  # newest last
        self._closed = False

    def __repr__(self) -> str:
        return f"<AppConnections {self._host}:{self._port} idle={len(self._idle)}>"

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def open(self) -> ByteStream:
        """A fresh connection (``Destination.open``); UpstreamUnavailable if the app refuses."""
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, limit=READ_CHUNK_BYTES
            )
        except OSError as exc:
            raise UpstreamUnavailable(f"the app is not answering ({exc.strerror or exc})") from None
        if self._on_open is not None:
            self._on_open()
        return AppStream(reader, writer, f"app:{self._host}:{self._port}")

    async def take(self) -> ByteStream | None:
        """The most recently idle connection still open, now the caller's alone (rule 1)."""
        while self._idle:
            stream, watcher = self._idle.popitem()
            if watcher.done():
                continue  # the app closed it or spoke unasked: closed already
            watcher.cancel()
            try:
                await asyncio.wait([watcher])  # its read must be gone before the relay reads
            except asyncio.CancelledError:
                stream.close()  # this browser connection is going away: the stream with it
                raise
            if watcher.cancelled() and not stream.app_reader.at_eof():
                return stream
            stream.close()  # its read ended just now, or the app closed it: nothing to lend
        return None

    def give(self, stream: ByteStream) -> None:
        """Keep ``stream`` idle for the next browser connection, or close it (rule 2)."""
        if self._closed or len(self._idle) >= self._max_idle or not isinstance(stream, AppStream):
            stream.close()
            return
        self._idle[stream] = asyncio.create_task(self._watch(stream))

    async def _watch(self, stream: AppStream) -> None:
        """Close ``stream`` when it idles too long, the app closes it or sends anything."""
        try:
            async with asyncio.timeout(self._idle_timeout_s):
                await stream.app_reader.read(1)
        except (TimeoutError, ConnectionError, OSError):
            pass
        # Cancelled (by ``take``): CancelledError propagates past this line.
        if self._idle.get(stream) is asyncio.current_task():
            del self._idle[stream]
        stream.close()

    def close(self) -> None:
        """Shutdown: close every idle connection (rule 4)."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for stream, watcher in idle.items():
            watcher.cancel()
            stream.close()
