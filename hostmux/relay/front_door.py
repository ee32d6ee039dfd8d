"""The HTTP front door: TCP and TLS listeners whose connections become relays.

Resource handling: every accepted connection runs as a task recorded in a
``ConnectionSet``, so shutdown can stop accepting, let in-flight requests
finish for a bounded time, and then cancel the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

from hostmux.http1.headers import ClientCertificate, ClientInfo, TrustedProxies
from hostmux.limits import ConnectionCounts
from hostmux.log import fields
from hostmux.relay.gateway import Gateway
from hostmux.relay.records import RecordBuilder, RequestRecord
from hostmux.relay.relay import HttpRelay, RelayLimits
from hostmux.relay.streams import ReaderWriterStream
from hostmux.relay.transport_stream import TransportStream

log = logging.getLogger("hostmux.http")


class ConnectionSet:
    """The live browser connections: each one's task and relay, and the relays
    parked without a task (``HttpRelay.parked``)."""

    def __init__(self) -> None:
        self._relays: dict[asyncio.Task[None], HttpRelay] = {}
        self._parked: set[HttpRelay] = set()

    def __len__(self) -> int:
        return len(self._relays) + len(self._parked)

    def __repr__(self) -> str:
        return f"<ConnectionSet {len(self)} connections, {len(self._parked)} parked>"

    def add(self, task: asyncio.Task[None], relay: HttpRelay) -> None:
        self._parked.discard(relay)
        self._relays[task] = relay
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        relay = self._relays.pop(task, None)
        if relay is not None and relay.parked:
            self._parked.add(relay)  # still open: its next task is added again

    def websockets(self) -> int:
        """Connections spliced after a ``101`` right now (counted when asked: metrics)."""
        return sum(1 for relay in self._relays.values() if relay.splicing)

    def spliced(self) -> Iterator[RecordBuilder]:
        """The records of the WebSockets spliced now, their byte counters live (read
        by the router's activity tick every few seconds, never per byte)."""
        for relay in self._relays.values():
            record = relay.spliced
            if record is not None:
                yield record

    async def drain(self, grace_s: float) -> None:
        """Shutdown: idle connections close now, requests in flight get ``grace_s``
        to finish, WebSockets get a 1001 close; whatever is left is cancelled."""
        for relay in [*self._relays.values(), *self._parked]:
            relay.go_away()  # (a parked one starts a task here, added to _relays)
        if self._relays:
            await asyncio.wait(set(self._relays), timeout=grace_s)
        for task in list(self._relays):
            task.cancel()
        if self._relays:
            await asyncio.wait(set(self._relays), timeout=5.0)


def log_request(record: RequestRecord) -> None:
    if not log.isEnabledFor(logging.INFO):
        return  # formatting the line is most of its cost: skip it when it is not written
    log.info(
        fields(
            "request", rid=record.request_id, name=record.name or None, host=record.host or None,
            peer=record.peer, method=record.method, target=record.target[:200],
            status=record.status, bytes_in=record.bytes_in, bytes_out=record.bytes_out,
            ms=record.duration_ms, note=record.note or None, user=record.user or None,
        )
    )  # fmt: skip


ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def connection_handler(
    scheme: str,
    *,
    gateway: Gateway,
    limits: RelayLimits | Callable[[], RelayLimits],
    connections: ConnectionSet,
    counts: ConnectionCounts,
    trusted_proxies: TrustedProxies | None = None,
    on_request: Callable[[RequestRecord], None] = log_request,
) -> ConnectionHandler:
    """What each accepted browser connection runs (also used by one-port mode); ``limits``
    may be a function, asked once per connection (the router's reload changes them);
    ``on_request`` gets each finished request's record (the access log, metrics)."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername") or ("?", 0)
        ip = str(peer[0])
        if not counts.admit(ip):
            # Over the limit: close at once (no request read, nothing to answer),
            # so one address cannot hold the router's descriptors.
            log.warning(fields("connection_refused", peer=f"{ip}:{peer[1]}", reason="limit"))
            writer.transport.abort()
            return
        try:
            now = limits() if callable(limits) else limits
            info = ClientInfo(peer_ip=ip, peer_port=int(peer[1]), scheme=scheme)
            stream = ReaderWriterStream(
                reader, writer, label=f"{scheme}:{ip}:{peer[1]}",
                close_linger_s=now.send_timeout_s,
            )  # fmt: skip
            relay = HttpRelay(stream, info, gateway, now, on_request, trusted_proxies)
            connections.add(task, relay)
            await relay.run()
        except asyncio.CancelledError:
            # Shutdown cancels what outlived its grace. This task is the root of
            # the connection: ending quietly keeps Python 3.11's stream callback
            # from logging the cancellation as an error.
            writer.transport.abort()
        finally:
            counts.release(ip)

    return on_connection


async def start_front_door(
    host: str,
    port: int,
    *,
    gateway: Gateway,
    limits: RelayLimits | Callable[[], RelayLimits],
    connections: ConnectionSet,
    counts: ConnectionCounts,
    trusted_proxies: TrustedProxies | None = None,
    tls: ssl.SSLContext | None,
    tls_handshake_timeout_s: float,
    sock: socket.socket | None = None,
    on_request: Callable[[RequestRecord], None] = log_request,
) -> asyncio.Server:
    """Serve ``host:port``, or ``sock`` when given (already bound: ``host``/``port`` unused).

    Each connection is a ``TransportStream`` (the protocol is the relay's
    stream: no StreamReader/StreamWriter) whose relay runs in its own task.
    """
    scheme = "https" if tls is not None else "http"
    loop = asyncio.get_running_loop()
    protocol = front_door_protocol(
        scheme, gateway=gateway, limits=limits, connections=connections, counts=counts,
        trusted_proxies=trusted_proxies, on_request=on_request,
    )  # fmt: skip

    where: dict[str, Any] = (
        {"sock": sock} if sock is not None else {"host": host, "port": port, "reuse_address": True}
    )
    return await loop.create_server(
        protocol,
        ssl=tls,
        ssl_handshake_timeout=tls_handshake_timeout_s if tls is not None else None,
        backlog=1024,
        **where,
    )


def front_door_protocol(
    scheme: str,
    *,
    gateway: Gateway,
    limits: RelayLimits | Callable[[], RelayLimits],
    connections: ConnectionSet,
    counts: ConnectionCounts,
    trusted_proxies: TrustedProxies | None = None,
    on_request: Callable[[RequestRecord], None] = log_request,
    client_certificate: Callable[[Any], ClientCertificate | None] | None = None,
) -> Callable[[], TransportStream]:
    """The front door's protocol factory, for ``create_server`` or for a socket accepted
    elsewhere (``loop.connect_accepted_socket``: the router's ClientHello peek);
    ``client_certificate`` is given a TLS connection's ``SSLObject``: its verified client
    certificate, if any, which the app is told of."""
    loop = asyncio.get_running_loop()
    restart = _Restarter(connections, counts)  # shared by its parked connections

    def on_made(stream: TransportStream, now: RelayLimits) -> None:
        assert stream.transport is not None
        task = loop.create_task(
            _serve_stream(
                stream, scheme, gateway=gateway, limits=now, connections=connections,
                counts=counts, trusted_proxies=trusted_proxies, on_request=on_request,
                client_certificate=client_certificate,
                restart=restart,
            )
        )  # fmt: skip
        _running.add(task)
        task.add_done_callback(_running.discard)

    def protocol() -> TransportStream:
        # A reload changes the limits: each connection takes those of its accept.
        now = limits() if callable(limits) else limits
        return TransportStream(
            scheme, on_made=partial(on_made, now=now), close_linger_s=now.send_timeout_s
        )

    return protocol


# The connections' tasks, held until they end (the loop keeps only weak references).
_running: set[asyncio.Task[None]] = set()


async def _serve_stream(
    stream: TransportStream,
    scheme: str,
    *,
    gateway: Gateway,
    limits: RelayLimits,
    connections: ConnectionSet,
    counts: ConnectionCounts,
    trusted_proxies: TrustedProxies | None,
    on_request: Callable[[RequestRecord], None],
    client_certificate: Callable[[Any], ClientCertificate | None] | None = None,
    restart: _Restarter,
) -> None:
    """One accepted connection's task: admit it, relay it, release its count."""
    task = asyncio.current_task()
    assert task is not None and stream.transport is not None
    peer = stream.transport.get_extra_info("peername") or ("?", 0)
    ip = str(peer[0])
    if not counts.admit(ip):
        log.warning(fields("connection_refused", peer=f"{ip}:{peer[1]}", reason="limit"))
        stream.transport.abort()
        return
    relay: HttpRelay | None = None
    try:
        stream.label = f"{scheme}:{ip}:{peer[1]}"
        certificate = None
        if client_certificate is not None:
            ssl_object = stream.transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                certificate = client_certificate(ssl_object)
        info = ClientInfo(ip, int(peer[1]), scheme, certificate)
        relay = HttpRelay(stream, info, gateway, limits, on_request, trusted_proxies)
        relay.restart = restart
        connections.add(task, relay)
        await relay.run()
    except asyncio.CancelledError:
        # Shutdown cancels what outlived its grace: the connection ends here.
        stream.transport.abort()
    finally:
        if relay is None or not relay.parked:  # a parked connection is still open
            counts.release(ip)


class _Restarter:
    """``HttpRelay.restart`` of a front door's connections: a task again for a parked
    relay, in the connection set at once (one per front door, shared: a parked
    connection holds only a reference to it)."""

    __slots__ = ("_connections", "_counts")

    def __init__(self, connections: ConnectionSet, counts: ConnectionCounts) -> None:
        self._connections = connections
        self._counts = counts

    def __call__(self, relay: HttpRelay) -> None:
        task = asyncio.get_running_loop().create_task(self._resume(relay))
        _running.add(task)
        task.add_done_callback(_running.discard)
        self._connections.add(task, relay)

    async def _resume(self, relay: HttpRelay) -> None:
        """A parked connection's task, started again: as ``_serve_stream`` from its wait on."""
        try:
            await relay.resume()
        except asyncio.CancelledError:
            relay.stream.abort()  # shutdown cancels what outlived its grace
        finally:
            if not relay.parked:
                self._counts.release(relay.client_ip)
