"""The sender's side of the router link: pooled mutual-TLS connections to peers.

``LinkPool.open_stream`` sends one stream request (``wire``) on an idle
connection to the holder, or on a new one (TLS with this router's cluster
certificate; the holder's certificate must speak for the holder's id), and
waits for the holder's answer: a ``LinkStream`` (the channel is open) or the
holder's ``LinkError``.

Rules:

1. One stream at a time per connection. A stream whose two directions both
   ended cleanly gives its connection back to the pool; one closed earlier
   half-closes (terminating chunk) and its connection is *settled*: the rest
   of the holder's answer is read and dropped for at most ``SETTLE_S``, then
   the connection goes back to the pool (or is closed). ``abort`` closes it.
2. At most ``MAX_IDLE_PER_PEER`` idle connections per peer; idle ones are
   closed after ``IDLE_S``.
3. A reused connection that turns out closed before the holder answered is
   replaced once by a fresh dial (the peer closed it while idle).

Exceptions::

    PeerUnreachable   the holder could not be dialled, refused our
                      certificate or its own, or broke the exchange
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import defaultdict

from hostmux.http1 import (
    END_OF_MESSAGE,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Http1Connection,
    InformationalResponse,
    Response,
    Role,
    State,
)
from hostmux.log import fields
from router.cluster.identity import PeerRefused, authorises, peer_id
from router.cluster.link_protocol import LinkProtocol, chunk
from router.cluster.wire import LinkError, StreamRequest, error_of

log = logging.getLogger("hostmux.cluster")

# Reason: about the concurrent streams one router sends a peer under load (wrk -c64).
MAX_IDLE_PER_PEER = 64
# Reason: shorter than the holder's idle close (peer_server), so the sender closes first.
IDLE_S = 30.0
# Reason: an app closes its end of a keep-alive connection at EOF within milliseconds;
# longer than this, a fresh TLS handshake is cheaper than waiting.
SETTLE_S = 2.0
# Reason: bounds the background reads of closed streams (each holds one connection).
MAX_SETTLING = 256


class PeerUnreachable(Exception):
    """The holder could not be reached, or broke the link exchange (one line)."""


class LinkConnection:
    """One TLS connection to a peer and its HTTP/1.1 state (client role)."""

    __slots__ = ("idle_since", "key", "link")

    def __init__(self, key: tuple[str, str], link: LinkProtocol) -> None:
        self.key = key  # (holder id, address)
        self.link = link
        self.idle_since = time.monotonic()

    def __repr__(self) -> str:
        return f"<LinkConnection {self.key[0]}@{self.key[1]} {self.link.h!r}>"

    @property
    def h(self) -> Http1Connection:
        return self.link.h

    def usable(self) -> bool:
        return self.link.usable()

    async def next_event(self) -> object:
        """The holder's next event (ConnectionResetError if the connection broke)."""
        return await self.link.next_event()

    def abort(self) -> None:
        self.link.abort()


class LinkStream:
    """One forwarded stream: the relay's ``ByteStream`` over a link exchange."""

    __slots__ = ("_closed", "_conn", "_pool", "_sent_end", "label")

    def __init__(self, conn: LinkConnection, pool: LinkPool, label: str) -> None:
        self._conn = conn
        self._pool = pool
        self._sent_end = False
        self._closed = False
        self.label = label

    def __repr__(self) -> str:
        return f"<LinkStream {self.label} via {self._conn!r}>"

    async def receive(self) -> bytes:
        event = await self._conn.next_event()
        if isinstance(event, Data):
            return event.data
        if isinstance(event, EndOfMessage) or event is PAUSED:
            return b""  # the holder's half-close: its channel ended
        raise ConnectionResetError(f"{self.label}: unexpected {event!r} on the link")

    async def send_all(self, data: bytes) -> None:
        self.write(data)
        if self._conn.link.must_drain():
            await self._conn.link.drain()

    def write(self, data: bytes) -> None:
        if self._sent_end or self._closed:
            raise ConnectionResetError(f"{self.label} is closed")
        if data:  # (the request was sent chunked: a chunk needs no Data event)
            self._conn.link.write(chunk(data))

    def must_drain(self) -> bool:
        return self._conn.link.must_drain()

    async def drain(self) -> None:
        await self._conn.link.drain()

    async def send_eof(self) -> None:
        if not self._sent_end and not self._closed and self._conn.usable():
            self._sent_end = True
            self._conn.link.write(self._conn.h.send(END_OF_MESSAGE))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if not conn.usable():
            conn.abort()
            return
        if not self._sent_end:
            self._sent_end = True
            conn.link.write(conn.h.send(END_OF_MESSAGE))  # half-close: the holder's EOF
        self._pool.settle(conn)

    def abort(self) -> None:
        self._closed = True
        self._conn.abort()


class LinkPool:
    """Idle link connections per peer, and the dialling of new ones.

    Resource handling: owns every connection it made; ``close`` ends them all
    (idle, settling and, by their abort, those still carrying a stream).
    """

    def __init__(self, context: ssl.SSLContext, *, handshake_timeout_s: float) -> None:
        self._context = context
        self._handshake_timeout_s = handshake_timeout_s
        self._idle: defaultdict[tuple[str, str], list[LinkConnection]] = defaultdict(list)
        self._settling: set[asyncio.Task[None]] = set()
        self.dialled = 0  # connections made (tests and logs: reuse shows as few)

    def __repr__(self) -> str:
        idle = sum(len(conns) for conns in self._idle.values())
        return f"<LinkPool idle={idle} settling={len(self._settling)} dialled={self.dialled}>"

    async def open_stream(
        self, holder_id: str, address: str, request: StreamRequest
    ) -> LinkStream | LinkError:
        """Send ``request`` to the holder; the open stream, or the holder's error answer.

        Error handling: PeerUnreachable for anything the link itself failed at;
        the caller bounds the time (a dial or an answer that never comes).
        """
        key = (holder_id, address)
        for attempt in (1, 2):
            conn = self._take_idle(key)
            reused = conn is not None
            if conn is None:
                conn = await self._dial(key)
            try:
                conn.link.write(conn.h.send(request.request(holder_id)))
                event = await conn.next_event()
                while isinstance(event, InformationalResponse):
                    event = await conn.next_event()
                if not isinstance(event, Response):
                    raise ConnectionResetError(f"link to {holder_id}: no answer ({event!r})")
            except (ConnectionError, OSError) as error:
                conn.abort()
                if reused and attempt == 1:
                    continue  # closed by the peer while idle: dial afresh
                raise PeerUnreachable(f"router {holder_id} at {address}: {error}") from None
            except BaseException:
                conn.abort()
                raise
            error_code = error_of(event)
            if error_code is None:
                return LinkStream(conn, self, f"link:{holder_id}:{request.name}")
            await self._finish_refused(conn)
            return error_code
        raise AssertionError("not reached: the second attempt dials afresh")

    async def _finish_refused(self, conn: LinkConnection) -> None:
        """After an error answer (empty body): end our empty body, keep the connection."""
        try:
            while not isinstance(await conn.next_event(), EndOfMessage):
                pass
            conn.link.write(conn.h.send(END_OF_MESSAGE))
            self._release(conn)
        except (ConnectionError, OSError):
            conn.abort()
        except BaseException:
            conn.abort()
            raise

    async def _dial(self, key: tuple[str, str]) -> LinkConnection:
        holder_id, address = key
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            transport, link = await loop.create_connection(
                lambda: LinkProtocol(Role.CLIENT), host.strip("[]"), int(port),
                ssl=self._context, server_hostname=holder_id,
                ssl_handshake_timeout=self._handshake_timeout_s,
            )  # fmt: skip
        except (OSError, ValueError) as error:
            raise PeerUnreachable(f"router {holder_id} at {address}: {error}") from None
        try:
            certificate_id = peer_id(transport.get_extra_info("ssl_object"))
            if not authorises(certificate_id, holder_id):
                raise PeerRefused(f"its certificate is for {certificate_id!r}")
        except PeerRefused as error:
            transport.abort()
            log.warning(fields("link_refused", router=holder_id, address=address, error=str(error)))
            raise PeerUnreachable(f"router {holder_id} at {address}: {error}") from None
        self.dialled += 1
        return LinkConnection(key, link)

    def _take_idle(self, key: tuple[str, str]) -> LinkConnection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable() and now - conn.idle_since < IDLE_S:
                return conn
            conn.abort()
        return None

    def _release(self, conn: LinkConnection) -> None:
        """A connection whose exchange ended cleanly: ready for the next stream."""
        h = conn.h
        if h.our_state is not State.DONE or h.their_state is not State.DONE or not conn.usable():
            conn.abort()
            return
        h.start_next_cycle()
        idle = self._idle[conn.key]
        if len(idle) >= MAX_IDLE_PER_PEER:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def settle(self, conn: LinkConnection) -> None:
        """Read the rest of a closed stream's answer in the background, then reuse it."""
        if conn.h.their_state is State.DONE:
            self._release(conn)
            return
        if len(self._settling) >= MAX_SETTLING:
            conn.abort()
            return
        task = asyncio.get_running_loop().create_task(self._settle(conn))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, conn: LinkConnection) -> None:
        try:
            async with asyncio.timeout(SETTLE_S):
                while True:
                    event = await conn.next_event()
                    if isinstance(event, EndOfMessage) or event is PAUSED:
                        break
                    if isinstance(event, ConnectionClosed):
                        raise ConnectionResetError("closed")
        except (ConnectionError, OSError, TimeoutError):
            conn.abort()
        except BaseException:
            conn.abort()
            raise
        else:
            self._release(conn)

    def sweep(self) -> None:
        """Close connections idle for longer than ``IDLE_S``."""
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            kept = []
            for conn in idle:
                if now - conn.idle_since < IDLE_S and conn.usable():
                    kept.append(conn)
                else:
                    conn.abort()
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]

    def forget(self, holder_id: str) -> None:
        """The peer failed: its idle connections are no good either."""
        for key in [key for key in self._idle if key[0] == holder_id]:
            for conn in self._idle.pop(key):
                conn.abort()

    async def close(self) -> None:
        for task in list(self._settling):
            task.cancel()
        for task in list(self._settling):
            with contextlib.suppress(BaseException):
                await task
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
