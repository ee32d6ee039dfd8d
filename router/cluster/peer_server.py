"""The holder's side of the router link: streams from peers piped to SSH channels.

Each accepted connection is TLS with a client certificate from the cluster CA
(the handshake refuses anyone else); it carries stream requests (``wire``)
one at a time. For each, the holder checks before answering that it holds a
tunnel for the name, of the owner the sender named, claimed at a generation
no newer than the one the sender saw; else ``409 route-moved``. Then it opens
the tunnel's channel (within ``connect_timeout_s``; else ``502
tunnel-failed``), answers ``200`` and pipes: request body chunks to the
channel, the channel's bytes back as response chunks, both ways at once with
back-pressure (a write waits for the other side's drain), a terminating chunk
as a half-close. The inner bytes are not parsed: the sender's relay did every
HTTP check already.

Resource handling: every connection runs as a task recorded here; ``drain``
(SIGTERM) closes idle connections at once and gives streams in flight a
grace period, as the front door does. A stream's channel is closed when the
stream ends, whatever happened.
Error handling: a broken link or channel ends that connection (the channel
closed, the TLS connection aborted); nothing a peer sends ends the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hostmux.http1 import (
    END_OF_MESSAGE,
    NEED_DATA,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Http1Connection,
    ProtocolError,
    Request,
    Role,
    State,
)
from hostmux.log import fields
from hostmux.relay import READ_CHUNK_BYTES, ByteStream, UpstreamUnavailable
from router.cluster.identity import PeerRefused, peer_id
from router.cluster.wire import (
    OPEN_ANSWER,
    BadStreamRequest,
    LinkError,
    StreamRequest,
    error_answer,
    parse_stream_request,
)
from router.tunnels import Tunnel, TunnelHub

log = logging.getLogger("hostmux.cluster")

# Reason: longer than the sender's idle close (link.IDLE_S), so the sender closes first.
IDLE_S = 60.0
# Reason: a link request head is a few hundred bytes; anything larger is not a peer's.
MAX_HEAD_BYTES = 8 * 1024


class PeerServer:
    """Serves the cluster link's connections for this router's tunnels."""

    def __init__(self, hub: TunnelHub, *, connect_timeout_s: float) -> None:
        self._hub = hub
        self._connect_timeout_s = connect_timeout_s
        self._tasks: dict[asyncio.Task[None], bool] = {}  # task: carrying a stream now
        self._going_away = False
        self.streams = 0  # streams served (logs and tests)
        self.moved = 0  # streams answered route-moved (logs and tests)

    def __repr__(self) -> str:
        return (
            f"<PeerServer connections={len(self._tasks)} streams={self.streams} moved={self.moved}>"
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One link connection (``asyncio.start_server``'s callback)."""
        task = asyncio.current_task()
        assert task is not None
        address = writer.get_extra_info("peername") or ("?", 0)
        try:
            peer = peer_id(writer.get_extra_info("ssl_object"))
        except PeerRefused as error:
            log.warning(fields("link_refused", address=f"{address[0]}:{address[1]}", error=error))
            writer.transport.abort()
            return
        self._tasks[task] = False
        try:
            await self._serve(task, reader, writer, peer)
        except (ConnectionError, OSError, ProtocolError, TimeoutError) as error:
            log.debug("link connection from %s ended: %r", peer, error)
        except asyncio.CancelledError:
            pass  # shutdown cancelled what outlived its grace; the root task ends quietly
        finally:
            self._tasks.pop(task, None)
            writer.transport.abort()  # nothing is left to flush: each exchange ended

    async def _serve(
        self,
        task: asyncio.Task[None],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        h = Http1Connection(Role.SERVER, max_head_bytes=MAX_HEAD_BYTES)
        while not self._going_away:
            async with asyncio.timeout(IDLE_S):
                event = await _next_event(h, reader)
            if isinstance(event, ConnectionClosed):
                return
            if not isinstance(event, Request):
                return
            self._tasks[task] = True
            try:
                reusable = await self._stream(h, event, reader, writer, peer)
            finally:
                self._tasks[task] = False
            if not reusable or h.our_state is not State.DONE or h.their_state is not State.DONE:
                return
            h.start_next_cycle()

    async def _stream(
        self,
        h: Http1Connection,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> bool:
        """Check, open and pipe one stream; True if the connection may carry another."""
        try:
            wanted = parse_stream_request(request)
        except BadStreamRequest as error:
            log.warning(fields("link_bad_request", router=peer, error=str(error)))
            writer.write(h.send(error_answer(LinkError.BAD_REQUEST)) + h.send(END_OF_MESSAGE))
            return False
        tunnel = self._tunnel_for(wanted)
        if tunnel is None:
            self.moved += 1
            log.info(
                fields(
                    "link_route_moved", name=wanted.name, router=peer,
                    generation=wanted.generation,
                )
            )  # fmt: skip
            return await _refuse(h, reader, writer, LinkError.ROUTE_MOVED)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                channel = await tunnel.open_stream(wanted.client_ip, wanted.client_port)
        except (UpstreamUnavailable, TimeoutError, ConnectionError, OSError) as error:
            log.warning(
                fields("link_tunnel_failed", name=wanted.name, error=str(error) or "timeout")
            )
            return await _refuse(h, reader, writer, LinkError.TUNNEL_FAILED)
        self.streams += 1
        log.info(
            fields(
                "link_stream", name=wanted.name, router=peer,
                client=f"{wanted.client_ip}:{wanted.client_port}", scheme=wanted.scheme,
                generation=wanted.generation,
            )
        )  # fmt: skip
        writer.write(h.send(OPEN_ANSWER))
        broken = False
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_channel_to_link(h, channel, writer))
                tg.create_task(_link_to_channel(h, reader, channel))
        except* (ConnectionError, OSError, ProtocolError) as group:
            log.debug("link stream %s ended: %r", wanted.name, group.exceptions)
            broken = True
        finally:
            channel.close()
        return not broken

    def _tunnel_for(self, wanted: StreamRequest) -> Tunnel | None:
        """This router's tunnel for the request, if it may serve it (owner, generation)."""
        found = self._hub.routes.lookup(wanted.name)
        if not isinstance(found, Tunnel) or found.owner != wanted.owner:
            return None
        if found.generation > wanted.generation:
            return None  # claimed after the sender's route was read: it may be stale
        return found

    async def drain(self, grace_s: float) -> None:
        """Shutdown: idle connections end now, streams in flight get ``grace_s``."""
        self._going_away = True
        for task, busy in list(self._tasks.items()):
            if not busy:
                task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)


async def _next_event(h: Http1Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = h.next_event()
        if event is not NEED_DATA:
            return event
        h.receive_data(await reader.read(READ_CHUNK_BYTES))


async def _refuse(
    h: Http1Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    error: LinkError,
) -> bool:
    """Answer ``error`` at once, then read the sender's (empty) body to its end."""
    writer.write(h.send(error_answer(error)) + h.send(END_OF_MESSAGE))
    async with asyncio.timeout(IDLE_S):
        while not isinstance(await _next_event(h, reader), EndOfMessage):
            pass  # a sender sends no body after an error answer; any is dropped
    return True


async def _channel_to_link(
    h: Http1Connection, channel: ByteStream, writer: asyncio.StreamWriter
) -> None:
    """The channel's bytes as response chunks; its EOF as the terminating chunk."""
    transport = writer.transport
    while data := await channel.receive():
        writer.write(h.send(Data(data)))
        if transport.get_write_buffer_size() > 0:
            await writer.drain()  # back-pressure: the sender's window
    writer.write(h.send(END_OF_MESSAGE))


async def _link_to_channel(
    h: Http1Connection, reader: asyncio.StreamReader, channel: ByteStream
) -> None:
    """The request body's chunks to the channel; the terminating chunk as its EOF."""
    writable = True
    while True:
        event = await _next_event(h, reader)
        if isinstance(event, Data):
            if writable:
                try:
                    await channel.send_all(event.data)
                except ConnectionError:
                    writable = False  # the app closed its end; the rest is dropped
        elif isinstance(event, EndOfMessage):
            if writable:
                with contextlib.suppress(ConnectionError):
                    await channel.send_eof()
            return
        else:
            raise ConnectionResetError(f"unexpected {event!r} on the link")
