"""Where a request goes when this router holds no tunnel for its name.

``TunnelGateway`` serves a name from its own route table first (no await, no
Redis); only a name it does not hold comes here (``Forwarder.route``):

- a cached route answers at once: unknown -> 404, held by nobody (reserved
  for its owner) -> 502 offline (in portal mode, for an instance the portal
  knows, the holding page instead: ``router.holding``), held -> a
  ``Destination`` whose ``open`` forwards to a holder over the router link;
- a miss is a coroutine that looks the name up in the registry (bounded by
  ``LOOKUP_TIMEOUT_S``) and decides the same way; a registry that cannot be
  reached answers 502 with a one-line reason, except for a name with a
  route known from before (fail static: the holder checks it anyway).

Opening a forwarded stream (``_open``) picks a live holder at random (never
this router), dials or reuses a link connection and sends the stream
request. A ``409 route-moved`` drops the cached route, looks the name up
afresh and tries once more (on this router's own tunnel if it now has one).
A holder that cannot be reached, or does not answer within the link's share
of ``connect_timeout_s``, is a 502 with ``X-Hostmux-Error:
router-unreachable`` (never a hang).

``Forwarder.run`` (a task of ``serve_router``) keeps the cache honest: it
subscribes to the registry's invalidations, drops each name it hears, and
resubscribes with back-off when the subscription is lost (the cache then
stops trusting its entries: ``routes``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from inspect import isawaitable
from typing import TYPE_CHECKING, NoReturn

from hostmux.http1 import ClientInfo, Headers, Page, status_page
from hostmux.log import fields
from hostmux.names import target_for_host
from hostmux.relay import ByteStream, Destination, UpstreamUnavailable
from router.cluster.link import LinkPool, LinkStream, PeerUnreachable
from router.cluster.routes import RouteCache
from router.cluster.wire import ERROR_HEADER, LinkError, StreamRequest
from router.registry.model import RegistryError, RegistryUnavailable, Route, RouteRegistry
from router.tunnels import (
    StreamOpener,
    Tunnel,
    TunnelHub,
    is_passthrough_owner,
    not_served_page,
    passthrough_misdirected_page,
)

if TYPE_CHECKING:
    from router.holding import HoldingPages

log = logging.getLogger("hostmux.cluster")

# Reason: the registry answers in milliseconds; its own 2 s timeout and retry could
# make one request wait 4 s more, so a look-up gets this long before the page says so.
LOOKUP_TIMEOUT_S = 2.0
# Reason: a router restarted on another port is found again within this long.
PEER_ADDRESS_TTL_S = 5.0
# Reason: the link gets this share of connect_timeout_s, so its own 502
# (router-unreachable) comes before the relay's 504 for the same wait.
LINK_SHARE_OF_CONNECT_TIMEOUT = 0.9
# Reason: a lost subscription is retried quickly at first, then no more than this often.
RESUBSCRIBE_MAX_S = 10.0
# Reason: how often idle link connections past their time are closed.
SWEEP_S = 10.0

UNREACHABLE_HEADERS = [(ERROR_HEADER, LinkError.ROUTER_UNREACHABLE.value.encode())]


class Forwarder:
    """Routes names this router does not hold to the routers that do."""

    def __init__(
        self,
        registry: RouteRegistry,
        hub: TunnelHub,
        pool: LinkPool,
        *,
        connect_timeout_s: float,
        response_headers: Callable[[Headers], Headers] | None = None,
    ) -> None:
        self.registry = registry
        self.cache = RouteCache()
        self.pool = pool
        self.router_id = ""  # set once bound (the registry's id for this router)
        self._hub = hub
        self._budget_s = connect_timeout_s * LINK_SHARE_OF_CONNECT_TIMEOUT
        self._response_headers = response_headers
        self._peers: dict[str, tuple[str, float]] = {}  # router id: (address, fetched at)
        # Portal mode: "starting…" for instances the portal knows that no router holds.
        self.holding: HoldingPages | None = None

    def __repr__(self) -> str:
        return f"<Forwarder router={self.router_id!r} {self.cache!r} {self.pool!r}>"

    # -- the gateway's question ------------------------------------------------

    def route(
        self, label: str, host: str, request_id: str, client: ClientInfo, as_html: bool
    ) -> Destination | Page | Awaitable[Destination | Page]:
        found, route = self.cache.get(label)
        if found:
            return self._decide(label, host, route, request_id, client, as_html)
        return self._look_up_then_decide(label, host, request_id, client, as_html)

    async def _look_up_then_decide(
        self, label: str, host: str, request_id: str, client: ClientInfo, as_html: bool
    ) -> Destination | Page:
        try:
            route = await self._lookup(label)
        except RegistryError as error:
            fallback = self.cache.fallback(label)
            if fallback is None:
                log.warning(fields("route_lookup_failed", name=label, error=str(error)))
                return status_page(
                    502, "the route registry is unreachable, so this router cannot tell "
                    "which router serves this name: try again", request_id=request_id,
                    as_html=as_html,
                )  # fmt: skip
            route = fallback  # fail static: the holder re-checks owner and generation
        decided = self._decide(label, host, route, request_id, client, as_html)
        return await decided if isawaitable(decided) else decided

    def _decide(
        self,
        label: str,
        host: str,
        route: Route | None,
        request_id: str,
        client: ClientInfo,
        as_html: bool,
    ) -> Destination | Page | Awaitable[Page]:
        if route is None or not route.holders:
            # Unknown (404) or reserved with no holder anywhere (502); in portal mode an
            # instance the portal knows gets the holding page instead.
            otherwise = not_served_page(label, route is not None, request_id, as_html)
            if self.holding is None:
                return otherwise
            return self.holding.answer(label, client.peer_ip, request_id, as_html, otherwise)
        if is_passthrough_owner(route.owner):  # its TLS is the backend's: only by SNI
            return passthrough_misdirected_page(host, request_id, as_html)
        return Destination(
            key=host,
            label=label,
            open=partial(self._open, label, route, client),
            response_headers=self._response_headers,
        )

    async def _lookup(self, name: str) -> Route | None:
        """The registry's answer for ``name``, stored in the cache (RegistryError if none)."""
        ticket = self.cache.ticket()
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                route = await self.registry.lookup(name)
        except TimeoutError:
            raise RegistryUnavailable("registry lookup: no answer in time") from None
        self.cache.put(name, route, ticket)
        return route

    # -- TCP tunnels held elsewhere ----------------------------------------------

    async def open_port(self, port: int, peer_ip: str, peer_port: int) -> ByteStream:
        """A stream to the router holding TCP port ``port`` (UpstreamUnavailable if none)."""
        name = f"tcp:{port}"
        found, route = self.cache.get(name)
        if not found:
            try:
                route = await self._lookup(name)
            except RegistryError as error:
                route = self.cache.fallback(name)
                if route is None:
                    raise UpstreamUnavailable(
                        f"the route registry is unreachable: {error}"
                    ) from None
        if route is None or not route.holders:
            raise UpstreamUnavailable(f"no tunnel holds port {port}")
        return await self._open(name, route, ClientInfo(peer_ip, peer_port, "http"))

    # -- TLS passthrough tunnels held elsewhere -----------------------------------

    async def passthrough_elsewhere(self, server_name: str) -> tuple[str, StreamOpener] | None:
        """A ClientHello's server name: its tunnel's name and an opener of a stream to the
        router holding it, if
        it names a TLS passthrough tunnel held on another router; else None (the hello is
        terminated here: a name held here, an HTTP name, or one no router holds).

        The route is the HTTP requests' (cached, or looked up within
        ``LOOKUP_TIMEOUT_S``); a registry that cannot be reached leaves the last
        route known, or none (the handshake then goes on, and its request says why).
        """
        target = target_for_host(server_name, self._hub.domain)
        if target is None or target.label is None:
            return None
        label = target.label
        if isinstance(self._hub.routes.lookup(label), Tunnel):
            return None  # held here: this router's own tunnel decided already
        found, route = self.cache.get(label)
        if not found:
            try:
                route = await self._lookup(label)
            except RegistryError:
                route = self.cache.fallback(label)
        if route is None or not route.holders or not is_passthrough_owner(route.owner):
            return None
        return label, partial(self._open_passthrough, label, route)

    async def _open_passthrough(self, label: str, route: Route, ip: str, port: int) -> ByteStream:
        return await self._open(label, route, ClientInfo(ip, port, "https"), passthrough=True)

    # -- opening a forwarded stream ---------------------------------------------

    async def _open(
        self, name: str, route: Route, client: ClientInfo, *, passthrough: bool = False
    ) -> ByteStream:
        """A stream to a holder of ``name`` (UpstreamUnavailable with a reason if none):
        HTTP bytes, or with ``passthrough`` raw TLS (never to a tunnel of the other kind)."""
        try:
            async with asyncio.timeout(self._budget_s):
                return await self._open_within(name, route, client, passthrough)
        except TimeoutError:
            raise UpstreamUnavailable(
                f"the router holding {name!r} did not answer in time", UNREACHABLE_HEADERS
            ) from None

    async def _open_within(
        self, name: str, route: Route | None, client: ClientInfo, passthrough: bool
    ) -> ByteStream:
        for attempt in (1, 2):
            if attempt == 2:
                try:
                    route = await self._lookup(name)
                except RegistryError:
                    raise UpstreamUnavailable(
                        f"the tunnel {name!r} moved and the route registry is unreachable"
                    ) from None
            local = self._hub.lookup_any(name)
            if local is not None:  # it moved here: served as any local request
                if local.passthrough != passthrough:
                    raise _changed_kind(name, local.passthrough)
                return await self._hub.open_stream(local, client.peer_ip, client.peer_port)
            if route is None:
                raise UpstreamUnavailable(f"no tunnel is called {name!r} any more")
            if is_passthrough_owner(route.owner) != passthrough:
                raise _changed_kind(name, not passthrough)
            certificate = client.certificate
            request = StreamRequest(
                name, route.owner, route.generation, client.peer_ip, client.peer_port,
                client.scheme, certificate.verified_by if certificate is not None else None,
            )  # fmt: skip
            result = await self._to_a_holder(route, request)
            if isinstance(result, LinkStream):
                return result
            if result is LinkError.TUNNEL_FAILED:
                raise UpstreamUnavailable(
                    f"the tunnel {name!r} did not open on the router holding it",
                    [(ERROR_HEADER, result.value.encode())],
                )
            if result is LinkError.CERTIFICATE_REQUIRED:
                raise UpstreamUnavailable(
                    f"{name!r} needs a client certificate: this connection did not present "
                    "one its certificate authority signed",
                    [(ERROR_HEADER, result.value.encode())],
                    status=403,
                )
            self.cache.drop(name)  # moved (or refused): never retried on the same route
            log.info(fields("route_moved", name=name, generation=route.generation))
        raise UpstreamUnavailable(f"the tunnel {name!r} keeps moving; try again")

    async def _to_a_holder(self, route: Route, request: StreamRequest) -> LinkStream | LinkError:
        holders = [h.router_id for h in route.holders if h.router_id != self.router_id]
        if not holders:
            raise UpstreamUnavailable(
                f"the tunnel {route.name!r} is offline; it may be reconnecting"
            )
        random.shuffle(holders)  # spread streams over the holders
        failure = ""
        for holder in holders:
            try:
                address = await self._address(holder)
                return await self.pool.open_stream(holder, address, request)
            except PeerUnreachable as error:
                failure = str(error)
                self._peers.pop(holder, None)
                self.pool.forget(holder)
                log.warning(fields("router_unreachable", name=route.name, error=failure))
        if self.cache.trusted:  # its holders may have changed: ask next time
            self.cache.drop(route.name)  # (untrusted, it is asked anyway; kept as fallback)
        raise UpstreamUnavailable(
            f"the router holding {route.name!r} cannot be reached", UNREACHABLE_HEADERS
        )

    async def _address(self, router_id: str) -> str:
        known = self._peers.get(router_id)
        now = time.monotonic()
        if known is not None and now - known[1] < PEER_ADDRESS_TTL_S:
            return known[0]
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                address = await self.registry.peer_address(router_id)
        except (RegistryError, TimeoutError) as error:
            if known is not None:
                return known[0]  # fail static
            raise PeerUnreachable(f"router {router_id}: address unknown ({error})") from None
        if address is None:
            raise PeerUnreachable(f"router {router_id} has not advertised a cluster address")
        self._peers[router_id] = (address, now)
        return address

    # -- keeping the cache honest ------------------------------------------------

    async def run(self) -> NoReturn:
        """Follow the registry's invalidations for ever; sweep idle link connections.

        Resource handling: the subscription's connection is closed when this is
        cancelled. Error handling: a lost subscription is logged, the cache stops
        trusting its entries, and it resubscribes with back-off.
        """
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._sweep())
            delay_s = 0.25
            while True:
                try:
                    async with self.registry.invalidations() as messages:
                        self.cache.subscribed()
                        log.info(fields("route_cache_subscribed"))
                        delay_s = 0.25
                        async for invalidation in messages:
                            self.cache.drop(invalidation.name)
                except RegistryError as error:
                    if self.cache.trusted:
                        log.warning(fields("route_cache_unsubscribed", error=str(error)))
                    self.cache.unsubscribed()
                await asyncio.sleep(delay_s)  # back-off before resubscribing, not a sync
                delay_s = min(delay_s * 2, RESUBSCRIBE_MAX_S)
        raise AssertionError("not reached")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)  # a period, not a synchronisation
            self.pool.sweep()


def _changed_kind(name: str, now_passthrough: bool) -> UpstreamUnavailable:
    """A name that became the other kind (HTTP, TLS passthrough) since it was routed."""
    kind = "a TLS passthrough name" if now_passthrough else "an HTTP name"
    return UpstreamUnavailable(f"the tunnel {name!r} is {kind} now; connect again")
