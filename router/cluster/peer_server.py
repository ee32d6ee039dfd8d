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
HTTP check already. The request body reaches the channel from the link's own
callback (``LinkProtocol.sink``, ``_LinkToChannel``), with no task woken per
chunk; the channel's bytes go back from the connection's task.

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
import ssl
from typing import TYPE_CHECKING

from hostmux.http1 import (
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    ProtocolError,
    Request,
    Role,
    State,
)
from hostmux.log import fields
from hostmux.relay import ByteStream, UpstreamUnavailable
from router.cluster.identity import PeerRefused, peer_id
from router.cluster.link_protocol import LinkProtocol, chunk
from router.cluster.wire import (
    OPEN_ANSWER,
    BadStreamRequest,
    LinkError,
    StreamRequest,
    error_answer,
    parse_stream_request,
)
from router.tunnels import Tunnel, TunnelHub

if TYPE_CHECKING:
    from router.client_certs import ClientCertRoutes

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
        # ``[[client_cert_routes]]`` (the router's, kept up to date by reload): a name
        # under a route is served only to a stream whose sender verified a certificate
        # by that route (``wire``: X-Hostmux-Client-Cert-Route).
        self.client_certs: ClientCertRoutes | None = None
        self.refused_certificate = 0  # streams answered certificate-required

    def __repr__(self) -> str:
        return (
            f"<PeerServer connections={len(self._tasks)} streams={self.streams} moved={self.moved}>"
        )

    def protocol(self) -> LinkProtocol:
        """A protocol for one accepted link connection (``loop.create_server``'s factory)."""
        return LinkProtocol(Role.SERVER, max_head_bytes=MAX_HEAD_BYTES, on_made=self._accepted)

    async def serve(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        handshake_timeout_s: float,
        backlog: int = 100,
    ) -> asyncio.Server:
        """Listen for link connections on ``host:port`` (TLS with ``context``)."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol, host, port, ssl=context, ssl_handshake_timeout=handshake_timeout_s,
            reuse_address=True, backlog=backlog,
        )  # fmt: skip

    def _accepted(self, link: LinkProtocol) -> None:
        # (the TLS handshake is over: an SSL transport reports connection_made after it)
        asyncio.get_running_loop().create_task(self._handle(link))

    async def _handle(self, link: LinkProtocol) -> None:
        """One link connection, until it or this router ends."""
        task = asyncio.current_task()
        assert task is not None and link.transport is not None
        transport = link.transport
        address = transport.get_extra_info("peername") or ("?", 0)
        try:
            peer = peer_id(transport.get_extra_info("ssl_object"))
        except PeerRefused as error:
            log.warning(fields("link_refused", address=f"{address[0]}:{address[1]}", error=error))
            transport.abort()
            return
        self._tasks[task] = False
        try:
            await self._serve(task, link, peer)
        except (ConnectionError, OSError, ProtocolError, TimeoutError) as error:
            log.debug("link connection from %s ended: %r", peer, error)
        except asyncio.CancelledError:
            pass  # shutdown cancelled what outlived its grace; the root task ends quietly
        finally:
            self._tasks.pop(task, None)
            link.abort()  # nothing is left to flush: each exchange ended

    async def _serve(self, task: asyncio.Task[None], link: LinkProtocol, peer: str) -> None:
        h = link.h
        while not self._going_away:
            async with asyncio.timeout(IDLE_S):
                event = await link.next_event()
            if isinstance(event, ConnectionClosed):
                return
            if not isinstance(event, Request):
                return
            self._tasks[task] = True
            try:
                reusable = await self._stream(link, event, peer)
            finally:
                self._tasks[task] = False
            if not reusable or h.our_state is not State.DONE or h.their_state is not State.DONE:
                return
            h.start_next_cycle()

    async def _stream(self, link: LinkProtocol, request: Request, peer: str) -> bool:
        """Check, open and pipe one stream; True if the connection may carry another."""
        try:
            wanted = parse_stream_request(request)
        except BadStreamRequest as error:
            log.warning(fields("link_bad_request", router=peer, error=str(error)))
            h = link.h
            link.write(h.send(error_answer(LinkError.BAD_REQUEST)) + h.send(END_OF_MESSAGE))
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
            return await _refuse(link, LinkError.ROUTE_MOVED)
        if self._needs_certificate(tunnel, wanted):
            self.refused_certificate += 1
            log.info(
                fields(
                    "link_certificate_required", name=wanted.name, router=peer,
                    client=f"{wanted.client_ip}:{wanted.client_port}",
                    verified_by=wanted.certificate_route,
                )
            )  # fmt: skip
            return await _refuse(link, LinkError.CERTIFICATE_REQUIRED)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                channel = await self._hub.open_stream(tunnel, wanted.client_ip, wanted.client_port)
        except (UpstreamUnavailable, TimeoutError, ConnectionError, OSError) as error:
            log.warning(
                fields("link_tunnel_failed", name=wanted.name, error=str(error) or "timeout")
            )
            return await _refuse(link, LinkError.TUNNEL_FAILED)
        self.streams += 1
        if log.isEnabledFor(logging.INFO):  # (not even formatted at the usual warning level)
            log.info(
                fields(
                    "link_stream", name=wanted.name, router=peer,
                    client=f"{wanted.client_ip}:{wanted.client_port}", scheme=wanted.scheme,
                    generation=wanted.generation,
                )
            )  # fmt: skip
        broken = False
        upload = _LinkToChannel(link, channel)
        try:
            link.write(link.h.send(OPEN_ANSWER))
            link.sink = upload
            upload()  # what came with the request head
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_channel_to_link(channel, link))
                if await upload.finished:  # the sender's half-close: the channel's EOF
                    with contextlib.suppress(ConnectionError):
                        await channel.send_eof()
        except* (ConnectionError, OSError, ProtocolError) as group:
            log.debug("link stream %s ended: %r", wanted.name, group.exceptions)
            broken = True
        finally:
            link.sink = None
            upload.stop()
            channel.close()
        return not broken

    def _tunnel_for(self, wanted: StreamRequest) -> Tunnel | None:
        """This router's tunnel for the request, if it may serve it (owner, generation)."""
        found = self._hub.lookup_any(wanted.name)  # a name or a TCP port
        if found is None or found.registry_owner != wanted.owner:  # (its kind too)
            return None
        if found.generation > wanted.generation:
            return None  # claimed after the sender's route was read: it may be stale
        return found

    def _needs_certificate(self, tunnel: Tunnel, wanted: StreamRequest) -> bool:
        """Whether the stream is refused by this router's client certificate route for the
        name (the sender verified none, or one by another route). A TLS passthrough
        tunnel or a TCP port is never asked (as on the router a browser reaches)."""
        if not self.client_certs or tunnel.passthrough or wanted.name.startswith("tcp:"):
            return False
        route = self.client_certs.route_for(wanted.name)
        return route is not None and wanted.certificate_route != route.key

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


async def _refuse(link: LinkProtocol, error: LinkError) -> bool:
    """Answer ``error`` at once, then read the sender's (empty) body to its end."""
    h = link.h
    link.write(h.send(error_answer(error)) + h.send(END_OF_MESSAGE))
    async with asyncio.timeout(IDLE_S):
        while not isinstance(await link.next_event(), EndOfMessage):
            pass  # a sender sends no body after an error answer; any is dropped
    return True


async def _channel_to_link(channel: ByteStream, link: LinkProtocol) -> None:
    """The channel's bytes as response chunks; its EOF as the terminating chunk."""
    while data := await channel.receive():
        link.write(chunk(data))
        if link.must_drain():
            await link.drain()  # back-pressure: the sender's window
    link.write(link.h.send(END_OF_MESSAGE))


class _LinkToChannel:
    """The request body's chunks to the channel, from the link's callback (its ``sink``).

    ``finished`` is True at the terminating chunk (the channel gets its EOF
    from the stream's task: ``send_eof`` may wait), and fails with
    ConnectionResetError if the link broke first. A channel that cannot take
    more pauses the link's reading until it has drained (the sender's
    window); a channel the app closed drops the rest.
    """

    __slots__ = ("_channel", "_drain", "_link", "_writable", "finished")

    def __init__(self, link: LinkProtocol, channel: ByteStream) -> None:
        self._link = link
        self._channel = channel
        self._writable = True
        self._drain: asyncio.Task[None] | None = None
        self.finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def __call__(self) -> None:
        if self.finished.done() or self._drain is not None:
            return
        link, channel = self._link, self._channel
        try:
            while True:
                event = link.h.next_event()
                if event is NEED_DATA:
                    if link.lost is not None:
                        raise ConnectionResetError(f"link lost: {link.lost}")
                    return
                if isinstance(event, Data):
                    if not self._writable:
                        continue  # the app closed its end; the rest is dropped
                    try:
                        channel.write(event.data)
                    except ConnectionError:
                        self._writable = False
                        continue
                    if channel.must_drain():
                        link.pause_reading()
                        self._drain = asyncio.get_running_loop().create_task(self._drained())
                        return
                elif isinstance(event, EndOfMessage):
                    self.finished.set_result(self._writable)
                    return
                elif event is PAUSED or isinstance(event, ConnectionClosed):
                    raise ConnectionResetError("the link ended mid-stream")
                else:
                    raise ConnectionResetError(f"unexpected {event!r} on the link")
        except (ConnectionError, ProtocolError) as error:
            self.finished.set_exception(ConnectionResetError(str(error)))

    async def _drained(self) -> None:
        try:
            await self._channel.drain()
        except ConnectionError:
            self._writable = False  # the app closed its end; the rest is dropped
        self._drain = None
        self._link.resume_reading()
        self()  # what arrived meanwhile

    def stop(self) -> None:
        """The stream ended: no drain left waiting, no exception left unread."""
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        if self.finished.done() and not self.finished.cancelled():
            self.finished.exception()  # (read, so asyncio does not log it as never retrieved)
        else:
            self.finished.cancel()
