"""The HTTPS listener that reads each ClientHello first: passthrough, client certificates, ACME.

Used instead of the plain TLS server (``hostmux.relay.start_front_door``) when
one of these is on, on the HTTPS port and for one-port mode's TLS connections:

- ``tls_passthrough``: a hello whose SNI names a TLS passthrough tunnel
  (``ssh -R NAME:443:...``) is relayed raw to that tunnel, never decrypted;
  in a cluster with the router link, also one held on another router
  (``Forwarder.passthrough_elsewhere``): the raw bytes cross the link as a
  stream to the holder, which opens the tunnel's channel, as for TCP ports;
- ``[[client_cert_routes]]``: a hello for a name under a route gets a context
  that asks for a client certificate (``router.client_certs``); other names
  are never asked;
- ``acme_challenge = "tls-alpn-01"``: a hello offering ``acme-tls/1`` for a
  name with a pending challenge gets the challenge certificate
  (``router.acme.tls_alpn``).

Rules:

1. The hello is peeked (``hostmux.tls_hello.peek_client_hello``): it stays in
   the socket, so the handshake that follows, or the backend of a passthrough
   tunnel, reads it from the start: nothing is replayed by hand, nothing is
   buffered here. The peek is bounded in size (16 KiB of handshake in at most
   32 records) and in time (``tls_handshake_timeout_s``): a hello split over
   many packets still reads; one never finished, or a connection that ends
   inside it, is closed at its deadline. A hello that is not one we can read
   goes on to the handshake, which refuses it in its own words.
2. Order: an ACME challenge; then a passthrough tunnel by SNI (this router's,
   then one the route registry says another router holds); then a client
   certificate route by SNI; then the front door's usual context (whose SNI
   callback picks the certificate). The SNI alone decides: a connection
   terminated here is an HTTP connection whose Host is checked per request
   (``TunnelGateway``), so it never reaches a passthrough tunnel nor a name of
   another client certificate route.
3. A passthrough connection is counted per client IP with the front door's
   browser connections, opens a ``forwarded-tcpip`` channel within
   ``connect_timeout_s`` (else it is closed), and is relayed as a TCP tunnel's
   (``router.tcp_ports.relay``: one chunk in flight per direction, half-closes
   passed on, closed after ``tcp_idle_timeout_s`` with no byte either way).

Resource handling: ``PeekingServer`` owns its listening socket and, in a
TaskGroup, a task per connection until it is handed to the front door's
protocol; a passthrough connection's relay stays in that task. ``close`` (a
drain) stops accepting and leaves them to end; cancelling ``serve`` (the
router stops) ends them all at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hostmux.limits import ConnectionCounts
from hostmux.log import fields
from hostmux.names import target_for_host
from hostmux.relay import (
    READ_CHUNK_BYTES,
    ByteStream,
    ReaderWriterStream,
    UpstreamUnavailable,
)
from hostmux.tls_hello import (
    ClientHello,
    HelloError,
    HelloTimeout,
    IncompleteHello,
    peek_client_hello,
)
from router.acme.tls_alpn import TlsAlpnChallenges
from router.client_certs import ClientCertRoutes
from router.one_port import AcceptFailures
from router.tcp_ports import relay
from router.tunnels import StreamOpener, Tunnel

log = logging.getLogger("hostmux.tls")

# Reason: a capacity error (EMFILE) repeats at once; pause before accepting again.
_CAPACITY_PAUSE_S = 0.1


@dataclass
class HelloRouting:
    """What a peeked ClientHello may lead to, and the front door for everything else."""

    protocol: Callable[[], asyncio.BaseProtocol]  # the HTTPS front door's, per connection
    default: ssl.SSLContext  # the front door's context (its SNI callback picks certificates)
    context_for_host: Callable[[str | None], ssl.SSLContext]  # the certificate of a name
    domain: str
    handshake_timeout_s: float
    counts: ConnectionCounts  # per client IP, shared with the front door
    connect_timeout_s: float = 30.0
    idle_timeout_s: float = 3600.0
    passthrough: Callable[[str | None], Tunnel | None] | None = None
    # A cluster with the router link: the name and an opener of a stream to the router
    # holding the passthrough tunnel a server name names, or None
    # (``Forwarder.passthrough_elsewhere``).
    elsewhere: Callable[[str], Awaitable[tuple[str, StreamOpener] | None]] | None = None
    client_certs: ClientCertRoutes | None = None
    challenges: TlsAlpnChallenges | None = None
    # Passthrough connections by outcome (closed, idle, reset, unavailable, refused_limit),
    # bytes_in / bytes_out; hellos closed unfinished (hello_timeout, hello_incomplete).
    stats: Counter[str] = field(default_factory=Counter)

    async def dispatch(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """One accepted TLS connection (non-blocking, nothing read yet), to its end or
        until it is handed to the front door."""
        loop = asyncio.get_running_loop()
        try:
            try:
                hello: ClientHello | None = await peek_client_hello(
                    conn, timeout_s=self.handshake_timeout_s
                )
            except (HelloTimeout, IncompleteHello) as exc:
                kind = "hello_timeout" if isinstance(exc, HelloTimeout) else "hello_incomplete"
                self.stats[kind] += 1
                log.info(fields("tls_hello_dropped", peer=_show(peer), reason=str(exc)))
                conn.close()
                return
            except HelloError:
                hello = None  # not ours to judge: the handshake refuses it in its own words
            sni = hello.sni if hello is not None else None
            if hello is not None and self.challenges is not None:
                challenge = self.challenges.context_for(sni, hello.alpn)
                if challenge is not None:
                    transport, _ = await loop.connect_accepted_socket(
                        asyncio.Protocol, conn, ssl=challenge,
                        ssl_handshake_timeout=self.handshake_timeout_s,
                    )  # fmt: skip
                    log.info(fields("acme_tls_alpn_answered", name=sni))
                    transport.close()  # the handshake was the answer
                    return
            tunnel = self.passthrough(sni) if self.passthrough is not None else None
            if tunnel is not None:
                await self._pass_through(conn, peer, tunnel.name, tunnel.open_stream)
                return
            if self.elsewhere is not None and sni is not None:
                held = await self.elsewhere(sni)
                if held is not None:  # (the hello is still in the socket: relayed too)
                    await self._pass_through(conn, peer, *held)
                    return
            await self._terminate(loop, conn, self._context(sni))
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.debug(fields("https_dropped", peer=_show(peer), reason=type(exc).__name__))
            conn.close()
        except Exception as exc:  # e.g. a route's CA file gone: this connection only
            log.error(fields("https_dispatch_failed", peer=_show(peer), reason=repr(exc)))
            conn.close()

    def _context(self, sni: str | None) -> ssl.SSLContext:
        """The context of the handshake: a client certificate route's for its names."""
        if self.client_certs and sni is not None:
            target = target_for_host(sni, self.domain)
            if target is not None and target.label is not None:
                route = self.client_certs.route_for(target.label)
                if route is not None:
                    return self.client_certs.context_for(route, self.context_for_host(sni))
        return self.default

    async def _terminate(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket, context: ssl.SSLContext
    ) -> None:
        await loop.connect_accepted_socket(
            self.protocol, conn, ssl=context, ssl_handshake_timeout=self.handshake_timeout_s
        )

    async def _pass_through(
        self, conn: socket.socket, peer: tuple[str, int], name: str, opener: StreamOpener
    ) -> None:
        ip = peer[0]
        if not self.counts.admit(ip):
            self.stats["refused_limit"] += 1
            log.warning(fields("passthrough_refused", name=name, peer=ip, reason="limit"))
            conn.close()
            return
        started = time.monotonic()
        outcome, reason, sent = "closed", "", [0, 0]
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=READ_CHUNK_BYTES)
            client = ReaderWriterStream(reader, writer, label=f"tls:{_show(peer)}")
            try:
                outcome, reason = await self._relay(opener, client, peer, sent)
            finally:
                if outcome in ("idle", "reset"):
                    client.abort()
                else:
                    client.close()
        finally:
            self.counts.release(ip)
            self.stats[outcome] += 1
            self.stats["bytes_in"] += sent[0]
            self.stats["bytes_out"] += sent[1]
            log.info(
                fields(
                    "passthrough_connection", name=name, peer=_show(peer),
                    outcome=outcome, reason=reason or None, bytes_in=sent[0],
                    bytes_out=sent[1], duration_s=round(time.monotonic() - started, 3),
                )
            )  # fmt: skip

    async def _relay(
        self,
        opener: StreamOpener,
        client: ReaderWriterStream,
        peer: tuple[str, int],
        sent: list[int],
    ) -> tuple[str, str]:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                upstream: ByteStream = await opener(*peer)
        except UpstreamUnavailable as exc:
            return "unavailable", str(exc)
        except TimeoutError:
            return "unavailable", "the tunnel client did not open a channel in time"
        try:
            return await relay(client, upstream, self.idle_timeout_s, sent), ""
        finally:
            upstream.close()


class PeekingServer:
    """Accepts on ``sock``, each connection's hello peeked first (``HelloRouting``).

    ``serve`` runs until cancelled; ``close`` (a drain) only stops accepting and
    closes the socket: connections being dispatched or relayed go on to their end.
    """

    def __init__(self, sock: socket.socket, routing: HelloRouting) -> None:
        self._sock = sock
        self.routing = routing
        self._accepting: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<PeekingServer closed={self._closed}>"

    async def serve(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                if not self._closed:
                    self._accepting = tasks.create_task(self._accept(tasks))
            await asyncio.Event().wait()  # closed, its connections done: until cancelled
        finally:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._accepting is not None:
            self._accepting.cancel()
        else:
            self._sock.close()

    async def wait_closed(self) -> None:
        """Until the listening socket is closed (after ``close``): a drain reports
        itself done only once new connections are refused."""
        if self._accepting is not None:
            await asyncio.wait([self._accepting])

    async def _accept(self, tasks: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        failures = AcceptFailures()
        try:
            while True:
                try:
                    conn, addr = await loop.sock_accept(self._sock)
                except OSError as exc:
                    if failures.failed():
                        log.error(fields("https_accept_failed", reason=str(exc)))
                    await asyncio.sleep(_CAPACITY_PAUSE_S)
                    continue
                failures.succeeded()
                conn.setblocking(False)
                tasks.create_task(self.routing.dispatch(conn, (str(addr[0]), int(addr[1]))))
        finally:
            self._sock.close()


def _show(peer: tuple[str, int]) -> str:
    return f"{peer[0]}:{peer[1]}"
