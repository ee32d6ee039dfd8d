"""Tunnels and the gateway that routes browser requests into them.

A ``Tunnel`` is one virtual remote forward of one SSH connection: it serves one
name and opens a fresh channel per upstream stream. The ``TunnelHub`` owns the
route table and logs every tunnel event; ``TunnelGateway`` is the relay's
routing decision for the router (Host → tunnel, or a status page).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from hostmux.http1 import (
    ClientInfo,
    Page,
    Request,
    facts_of,
    host_only_cookies,
    is_websocket_upgrade,
    router_home_page,
    status_page,
    wants_html,
)
from hostmux.log import fields
from hostmux.names import target_for_host
from hostmux.relay import ByteStream, Destination, RequestRecord
from hostmux.tunnel.websocket import WSS_PATH, WssAcceptor
from router.blocks import BlockList
from router.pool import Pick, Pool, PoolSettings, cookie_attributes, cookie_token
from router.routing import NameTaken, Offline, RouteTable

if TYPE_CHECKING:
    from router.acme.challenges import HttpChallenges
    from router.activity import Activity
    from router.client_certs import ClientCertRoutes
    from router.cluster.forwarding import Forwarder
    from router.holding import HoldingPages
    from router.membership import Membership
    from router.tcp_ports import TcpPorts

log = logging.getLogger("hostmux.tunnels")

# Opens one stream down the tunnel for a browser at (ip, port).
StreamOpener = Callable[[str, int], Awaitable[ByteStream]]

# ``tunnel_down``'s ``data.reason`` when the portal certificate the tunnel was opened
# with passed its ``valid_before`` (the job's lifetime ended).
CERTIFICATE_EXPIRED = "certificate_expired"

# A TLS passthrough tunnel's owner in the route registry: its key's plus this mark, so
# the registry keeps a name HTTP or passthrough cluster-wide (the other kind is another
# owner) and a route says its kind to every router (``Route.owner``). Never in a key's
# fingerprint (SHA256:base64) nor an instance id (a DNS label).
PASSTHROUGH_OWNER_MARK = "#tls"


def is_passthrough_owner(registry_owner: str) -> bool:
    """Whether a route's owner (``Tunnel.registry_owner``) is a TLS passthrough tunnel's."""
    return registry_owner.endswith(PASSTHROUGH_OWNER_MARK)


# Told each tunnel event: (kind, name, url, generation, reason). The generation is the
# name's in the route registry (0 without one); the reason is None unless the router
# knows why a tunnel went down (``CERTIFICATE_EXPIRED``).
TunnelObserver = Callable[[str, str, str, int, str | None], None]


@dataclass(eq=False, slots=True)
class Tunnel:
    name: str
    owner: str  # SHA256 fingerprint of the key that claimed the name
    peer: str  # the SSH client's address
    open_stream: StreamOpener
    created: float = field(default_factory=time.monotonic)
    # The tunnel's connection id in the route registry (release is by tunnel, not by name).
    lease_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The name's generation in the route registry when this tunnel claimed it (0: no
    # registry); a peer's request routed by an older generation is answered "moved".
    generation: int = 0
    # Ends the tunnel from the router's side, with a reason (a lost lease); set by the SSH layer.
    close: Callable[[str], None] | None = None
    transport: str = "ssh"  # how its client reached the router: "ssh" or "wss"
    since: float = field(default_factory=time.time)  # Unix time (the admin API shows it)
    # The admin API's counters, updated once per finished request (``TunnelHub.count``).
    requests: int = 0
    bytes_in: int = 0  # request bytes from browsers
    bytes_out: int = 0  # response bytes to browsers
    last_activity: float = 0.0  # Unix time the last request finished (0: none yet)
    # Request ids of WebSocket upgrades routed here and not finished (open WebSockets);
    # None until the first (most tunnels never carry one: no set each).
    websockets: set[str] | None = None
    # Pools (``router.pool``): whether its client asked for one (HOSTMUX_POOL=1), its
    # member id, and the pool it serves in (None: a name of its own, as ever).
    wants_pool: bool = False
    member_id: str = ""
    pool: Pool | None = None
    # TLS passthrough (``-R NAME:443:...``): served raw by SNI, never as HTTP.
    passthrough: bool = False

    def __repr__(self) -> str:
        return f"<Tunnel {self.name} owner={self.owner} peer={self.peer}>"

    @property
    def registry_owner(self) -> str:
        """Its owner as the route registry stores it: marked for a passthrough tunnel."""
        return self.owner + PASSTHROUGH_OWNER_MARK if self.passthrough else self.owner


class Blocked(NameTaken):
    """The operator blocked the key or the name (``router.blocks``); the message says which."""


class OtherKind(NameTaken):
    """The name is held (or reserved) by the same key as the other kind, HTTP or TLS
    passthrough, elsewhere in the cluster; the message says so."""


class TunnelHub:
    """The router's tunnels: claims, releases, lookups and their log lines."""

    def __init__(self, *, domain: str, scheme: str, public_port: int, reservation_s: float):
        self.domain = domain
        self.routes: RouteTable[Tunnel] = RouteTable(reservation_s=reservation_s)
        self._scheme = scheme
        self._public_port = public_port
        self.ssh_port = 22  # the port tunnel clients dial, once bound (the home page's hint)
        # Told every tunnel_up and tunnel_down (``TunnelObserver``): the portal's webhook.
        self.observers: list[TunnelObserver] = []
        # This router's part in a cluster; None: names live in this process only.
        self.cluster: Membership | None = None
        # Keys and names the operator blocked (the admin API keeps it up to date); with a
        # registry, False until they were first read from it (claims wait: refused).
        self.blocks = BlockList()
        self.blocks_known = True
        # Why they could not be read, when the reason is the operator's to fix (the
        # registry refused the router's credentials): told to refused clients.
        self.blocks_unreadable: str | None = None
        # TCP tunnels (``router.tcp_ports``), whose names are "tcp:PORT"; None: none.
        self.tcp: TcpPorts | None = None
        # Activity, idle state and usage per name (``router.activity``); None: not kept.
        self.activity: Activity | None = None
        # Pools' settings (``router.config``: pool_affinity, pool_backoff_s).
        self.pool_settings = PoolSettings(secret=os.urandom(32))
        # TLS passthrough tunnels (``-R NAME:443:...``) allowed: the HTTPS port peeks SNI.
        self.tls_passthrough = False
        # Tunnel and SSH events by kind (``router.operations`` turns them into metrics):
        # tunnel_up, tunnel_refused, ssh_auth_refused_key, ssh_auth_rate_limited.
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<TunnelHub *.{self.domain} {self.routes!r}>"

    def set_public_port(self, scheme: str, port: int) -> None:
        self._scheme = scheme
        self._public_port = port

    def url_for(self, name: str) -> str:
        if name.startswith("tcp:"):  # a TCP tunnel's port
            return f"tcp://{self.domain}:{name[4:]}"
        default_port = 443 if self._scheme == "https" else 80
        port = "" if self._public_port in (0, default_port) else f":{self._public_port}"
        return f"{self._scheme}://{name}.{self.domain}{port}"

    async def claim_in_cluster(self, tunnel: Tunnel) -> None:
        """``claim``, after claiming the name in the cluster's registry (``cluster`` set).

        Raises NameTaken (another owner, anywhere in the cluster; Blocked) or
        RegistryUnavailable (ownership is never guessed).
        """
        assert self.cluster is not None
        self._check_blocks(tunnel)
        if self._join(tunnel):  # a pool's member: this router holds the name already
            return
        await self.cluster.claim(tunnel)
        try:
            self.claim(tunnel)
        except NameTaken:
            self.cluster.release(tunnel)  # reserved here for another key: give it back
            raise

    def claim(self, tunnel: Tunnel) -> None:
        """Serve ``tunnel.name`` by ``tunnel``; raises NameTaken for another owner, Blocked
        for a key or name the operator blocked."""
        self._check_blocks(tunnel)
        if self._join(tunnel):
            return
        replaced = self.routes.claim(tunnel.name, tunnel.owner, tunnel)
        if tunnel.wants_pool:
            self._start_pool(tunnel)
        self.counts["tunnel_up"] += 1
        self._notify("tunnel_up", tunnel)
        log.info(
            fields(
                "tunnel_up", name=tunnel.name, peer=tunnel.peer, key=tunnel.owner,
                url=self.url_for(tunnel.name), replaced=replaced.peer if replaced else None,
            )
        )  # fmt: skip

    def _join(self, tunnel: Tunnel) -> bool:
        """Add ``tunnel`` to its name's pool, if the name is one of its owner's here."""
        head = self.routes.lookup(tunnel.name)
        if not isinstance(head, Tunnel) or head.pool is None or head.owner != tunnel.owner:
            return False
        pool = tunnel.pool = head.pool
        # One lease for the pool on this router: members come and go under it.
        tunnel.lease_id, tunnel.generation = head.lease_id, head.generation
        tunnel.member_id = tunnel.member_id or uuid.uuid4().hex[:16]
        replaced = pool.add(tunnel, tunnel.member_id)
        self._keep_head(pool, tunnel.name, tunnel.owner)
        self.counts["tunnel_up"] += 1
        log.info(
            fields(
                "pool_member_up", name=tunnel.name, peer=tunnel.peer, key=tunnel.owner,
                member=tunnel.member_id, members=len(pool.members),
                replaced=replaced.peer if replaced else None,
            )
        )  # fmt: skip
        return True

    def _start_pool(self, tunnel: Tunnel) -> None:
        tunnel.member_id = tunnel.member_id or uuid.uuid4().hex[:16]
        tunnel.pool = Pool(tunnel.name, self.pool_settings)
        tunnel.pool.add(tunnel, tunnel.member_id)
        log.info(fields("pool_up", name=tunnel.name, member=tunnel.member_id, peer=tunnel.peer))

    def _keep_head(self, pool: Pool, name: str, owner: str) -> None:
        """The route table's tunnel for a pool's name stays one of its live members."""
        head = self.routes.lookup(name)
        if pool.members and (not isinstance(head, Tunnel) or pool.member_of(head) is None):
            self.routes.claim(name, owner, pool.members[0].tunnel)

    def pool_requested(self, tunnel: Tunnel, member_id: str | None) -> None:
        """Its client asked for a pool after its forward (OpenSSH sends SetEnv on the
        session, after the forward): the name becomes a pool if ``tunnel`` still holds it
        alone; a member learns its member id."""
        pool = tunnel.pool
        if pool is not None:
            if member_id and member_id != tunnel.member_id:
                tunnel.member_id = member_id
                pool.rename(tunnel, member_id)
                self._keep_head(pool, tunnel.name, tunnel.owner)
            return
        if tunnel.name.startswith("tcp:") or self.routes.lookup(tunnel.name) is not tunnel:
            return  # a TCP port, or replaced meanwhile: nothing to make a pool of
        tunnel.member_id = member_id or tunnel.member_id
        self._start_pool(tunnel)

    def retune_pools(self, *, affinity: str, backoff_s: float, open_timeout_s: float) -> None:
        """New pool options (a reload): for the pools there are and those to come."""
        self.pool_settings = settings = dataclasses.replace(
            self.pool_settings, affinity=affinity, backoff_s=backoff_s,
            open_timeout_s=open_timeout_s,
        )  # fmt: skip
        for _, tunnel in self.routes.held():
            if tunnel.pool is not None:
                tunnel.pool.settings = settings

    async def open_stream(self, tunnel: Tunnel, orig_host: str, orig_port: int) -> ByteStream:
        """A stream down ``tunnel``, or down the member its pool picks (a request that came
        over the router link: this router's counts decide, no affinity cookie)."""
        pool = tunnel.pool
        if pool is not None and pool.member_of(tunnel) is not None:
            stream, _ = await pool.open_stream(orig_host, orig_port)
            return stream
        return await tunnel.open_stream(orig_host, orig_port)

    def members_of(self, tunnel: Tunnel) -> list[Tunnel]:
        """The tunnels serving ``tunnel``'s name here: its pool's members, or itself."""
        pool = tunnel.pool
        if pool is None or pool.member_of(tunnel) is None:
            return [tunnel]
        return [member.tunnel for member in pool.members]

    def _check_blocks(self, tunnel: Tunnel) -> None:
        refusal = self.block_refusal(tunnel.owner, tunnel.name, tunnel.peer)
        if refusal is not None:
            raise Blocked(refusal)

    def block_refusal(self, owner: str, name: str, peer: str) -> str | None:
        """What a client claiming ``name`` (a name or "tcp:PORT") as ``owner`` is told when
        a block stops it (logged), or None."""
        if not self.blocks_known:
            if self.blocks_unreadable is not None:
                return f"{self.blocks_unreadable} (for the router's operator to fix)"
            return "the router has not read its blocks from the registry yet: try again"
        refusal = self.blocks.refusal(owner, name)
        if refusal is not None:
            log.info(fields("claim_blocked", name=name, peer=peer, key=owner))
        return refusal

    def tunnels(self) -> list[Tunnel]:
        """The tunnels this router serves now (each member of a pool): names, then TCP ports."""
        return [member for _, tunnel in self.held_all() for member in self.members_of(tunnel)]

    def kick(self, name: str, reason: str) -> int:
        """Close the tunnel serving ``name``; how many were closed (0 or 1).

        The SSH connection left with no forward is closed too: its client sees the end.
        """
        found = self.lookup_any(name)
        return self.close_tunnels(self.members_of(found) if found is not None else [], reason)

    def kick_blocked(self) -> int:
        """Close every tunnel a block in ``blocks`` matches (blocking is kicking)."""
        blocked = [t for t in self.tunnels() if self.blocks.refusal(t.owner, t.name) is not None]
        return self.close_tunnels(blocked, "blocked by the router's operator")

    def close_tunnels(self, tunnels: list[Tunnel], reason: str) -> int:
        for tunnel in tunnels:
            if tunnel.close is not None:
                tunnel.close(reason)
            log.info(fields("tunnel_kicked", name=tunnel.name, peer=tunnel.peer, reason=reason))
        return len(tunnels)

    def count(self, record: RequestRecord) -> None:
        """The relay's ``on_request``: one finished request added to its tunnel's counters."""
        tunnel = self.routes.lookup(record.name) if record.name else None
        if isinstance(tunnel, Tunnel):
            tunnel.requests += 1
            tunnel.bytes_in += record.bytes_in
            tunnel.bytes_out += record.bytes_out
            tunnel.last_activity = time.time()
            if tunnel.websockets is not None:
                tunnel.websockets.discard(record.request_id)

    def serves(self, tunnel: Tunnel) -> bool:
        """Whether ``tunnel`` still serves its name here (not released, not replaced)."""
        return self.lookup_any(tunnel.name) is tunnel

    def lookup_any(self, name: str) -> Tunnel | None:
        """The tunnel holding ``name`` here, a name or a TCP port ("tcp:PORT")."""
        routes = (
            self.tcp.routes if self.tcp is not None and name.startswith("tcp:") else self.routes
        )
        found = routes.lookup(name)
        return found if isinstance(found, Tunnel) else None

    def passthrough_for(self, server_name: str | None) -> Tunnel | None:
        """The TLS passthrough tunnel a ClientHello naming ``server_name`` goes to, or None."""
        if server_name is None:
            return None
        target = target_for_host(server_name, self.domain)
        if target is None or target.label is None:
            return None
        found = self.routes.lookup(target.label)
        return found if isinstance(found, Tunnel) and found.passthrough else None

    def held_all(self) -> list[tuple[str, Tunnel]]:
        """Every tunnel this router serves: names, then TCP ports."""
        tcp = self.tcp.held() if self.tcp is not None else []
        return [*self.routes.held(), *tcp]

    def _notify(self, event: str, tunnel: Tunnel, reason: str | None = None) -> None:
        for observer in self.observers:
            observer(event, tunnel.name, self.url_for(tunnel.name), tunnel.generation, reason)

    def release(self, tunnel: Tunnel, *, reason: str | None = None, reserve: bool = True) -> None:
        """``tunnel`` stops serving its name (no-op if another tunnel replaced it).

        ``reason``: why, when the router knows (``tunnel_down``'s ``data.reason``);
        ``reserve`` False: the job is over, the name is free at once (no reservation).
        """
        if self.tcp is not None and tunnel.name.startswith("tcp:"):
            if self.tcp.release(tunnel) and self.cluster is not None:
                self.cluster.release(tunnel)  # in the background, as for a name
            return
        pool = tunnel.pool
        if pool is not None and pool.remove(tunnel) and pool.members:
            # Others serve on: no reservation, no registry release (the pool's lease stays).
            self._keep_head(pool, tunnel.name, tunnel.owner)
            held_s = round(time.monotonic() - tunnel.created, 1)
            log.info(
                fields(
                    "pool_member_down", name=tunnel.name, peer=tunnel.peer,
                    member=tunnel.member_id, members=len(pool.members), held_s=held_s,
                    reason=reason,
                )
            )  # fmt: skip
            return
        if self.routes.release(tunnel.name, tunnel, reserve=reserve):
            if self.cluster is not None:  # in the background: never blocks the caller
                self.cluster.release(tunnel, reserve=reserve)
            self._notify("tunnel_down", tunnel, reason)
            held_s = round(time.monotonic() - tunnel.created, 1)
            log.info(
                fields("tunnel_down", name=tunnel.name, peer=tunnel.peer, held_s=held_s,
                       reason=reason)
            )  # fmt: skip


class TunnelGateway:
    """Routes each request by Host: a tunnel, the router's own page, or an error page."""

    def __init__(
        self, hub: TunnelHub, wss: WssAcceptor | None = None, *, keep_cookie_domain: bool = False
    ) -> None:
        self._hub = hub
        self._wss = wss
        # Apps' cookies stay host-only unless the operator wants them shared (``_cookies``).
        self.response_headers = None if keep_cookie_domain else host_only_cookies
        # Names held on other routers of the cluster (``cluster_listen`` set); None: 404/502.
        self.forwarder: Forwarder | None = None
        # Portal mode: "starting…" for instances the portal knows whose tunnel is not up.
        self.holding: HoldingPages | None = None
        # ACME's pending HTTP-01 answers (acme_challenge http-01), asked before routing.
        self.acme_http: HttpChallenges | None = None
        # ``[[client_cert_routes]]``: names served only with a verified client certificate.
        self.client_certs: ClientCertRoutes | None = None

    def route(
        self, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Destination | Page | Awaitable[Destination | Page]:
        if self.acme_http is not None and client.scheme == "http":
            answer = self.acme_http.page(host, request.target)
            if answer is not None:
                return answer
        target = target_for_host(host, self._hub.domain)
        if target is None:
            return status_page(
                421, f"this router does not serve {host}", request_id=request_id,
                as_html=_wants_html(request),
            )  # fmt: skip
        if target.label is None:
            if (
                self._wss is not None
                and request.target.split(b"?")[0] == WSS_PATH.encode()
                and is_websocket_upgrade(request.headers)
            ):
                # SSH over WebSocket: the relay carries it to the in-process endpoint.
                return Destination(
                    key="wss", label="_hostmux",
                    open=partial(self._wss.open_stream, client.peer_ip, client.peer_port),
                )  # fmt: skip
            return router_home_page(
                self._hub.domain, ssh_port=self._hub.ssh_port, as_html=_wants_html(request)
            )
        if self.client_certs:
            refusal = self._certificate_refusal(target.label, host, request, request_id, client)
            if refusal is not None:
                return refusal
        found = self._hub.routes.lookup(target.label)
        if isinstance(found, Tunnel) and found.passthrough:
            # Its TLS belongs to the backend: a connection terminated here (another SNI, or
            # plain HTTP) never reaches it by its Host header.
            return passthrough_misdirected_page(host, request_id, _wants_html(request))
        if self.forwarder is not None and not isinstance(found, Tunnel):
            # Held here: served here, as without a cluster. Else another router may hold it.
            return self.forwarder.route(
                target.label, host, request_id, client, _wants_html(request)
            )
        if found is None or isinstance(found, Offline):
            as_html = _wants_html(request)
            otherwise = not_served_page(target.label, found is not None, request_id, as_html)
            if self.holding is None:
                return otherwise
            return self.holding.answer(target.label, client.peer_ip, request_id, as_html, otherwise)
        if request.method == b"GET" and facts_of(request).websocket_upgrade:
            if found.websockets is None:
                found.websockets = set()
            found.websockets.add(request_id)  # until its record comes (``TunnelHub.count``)
        pool = found.pool
        if pool is not None:
            return self._pool_destination(pool, host, request, client)
        return Destination(
            # The tunnel, not the host: a kept-alive browser connection whose tunnel was
            # replaced (a reconnect, a renewed certificate's swap) opens its next request
            # on the new tunnel instead of reusing the old one's channel, which may close.
            key=found.lease_id,
            label=found.name,
            open=partial(found.open_stream, client.peer_ip, client.peer_port),
            response_headers=self.response_headers,
            response_headers_checked=True,  # host_only_cookies keeps values valid
        )

    def _pool_destination(
        self, pool: Pool, host: str, request: Request, client: ClientInfo
    ) -> Destination:
        """A pool's member is picked when the relay opens its upstream (``router.pool``)."""
        preferred = cookie = None
        if pool.settings.affinity == "cookie":
            token = cookie_token(request.headers)
            if token is not None:
                preferred = pool.by_token(token)
            cookie = cookie_attributes(client.scheme == "https")
        base = self.response_headers
        pick = Pick(pool, client.peer_ip, client.peer_port, preferred, cookie, base)
        return Destination(
            # Per epoch: after a member was replaced (a reconnect, a renewed certificate's
            # swap) or went, a kept-alive connection opens its next request anew.
            key=f"{host}\0{pool.epoch}" if pool.epoch else host, label=pool.name, open=pick.open,
            response_headers=pick.response_headers if cookie else self.response_headers,
            response_headers_checked=True,  # the cookie's value is ours (base64url)
        )  # fmt: skip

    def _certificate_refusal(
        self, label: str, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Page | None:
        """403 when ``label`` is under a client certificate route and this connection's
        certificate was not verified by that route (none, or one made for another name)."""
        assert self.client_certs is not None
        route = self.client_certs.route_for(label)
        if route is None:
            return None
        certificate = client.certificate
        if certificate is not None and certificate.verified_by == route.key:
            return None
        return status_page(
            403, f"{host} needs a client certificate: this connection did not present one "
            "its certificate authority signed", request_id=request_id,
            as_html=_wants_html(request),
        )  # fmt: skip


def passthrough_misdirected_page(host: str, request_id: str, as_html: bool) -> Page:
    """421 for a request whose Host names a TLS passthrough tunnel (here or elsewhere)."""
    return status_page(
        421, f"{host} is served by TLS passthrough: connect with it as the TLS server "
        "name (SNI)", request_id=request_id, as_html=as_html,
    )  # fmt: skip


def not_served_page(label: str, reserved: bool, request_id: str, as_html: bool) -> Page:
    """404 for a name nobody holds, 502 for one reserved after its tunnel left."""
    if reserved:
        return status_page(
            502, f"the tunnel {label!r} is offline; it may be reconnecting",
            request_id=request_id, as_html=as_html,
        )  # fmt: skip
    return status_page(
        404, f"no tunnel is called {label!r}", request_id=request_id, as_html=as_html
    )


def _wants_html(request: Request) -> bool:
    """Whether a page for ``request`` should be HTML (only asked when a page is the answer)."""
    return any(k == b"accept" and wants_html(v) for k, v in request.headers)
