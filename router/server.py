"""The router's life: build it, bind its listeners, serve, shut down.

``run_router`` is four steps, each its own function:

1. ``build_router``: check the config's files and make the state (host key,
   development CA, authorized_keys), the tunnel hub, the authenticator and the
   limits — everything that can fail on bad configuration, before any port is
   bound or ``router_ready`` is logged;
2. ``bind_router``: the SSH listeners, the HTTPS/HTTP front doors and the
   one-port sockets; a port that cannot be had is a one-line ConfigError;
3. ``serve_router``: ``router_ready``, then the background tasks (reservation
   sweep, portal events, one-port accept loops) until ``stop`` is set;
4. ``shut_down_router``: stop accepting, give browser connections
   ``shutdown_grace_s`` to finish, then close the SSH side (tunnel clients
   reconnect, to this router when it is back or to another).

Between 3 and 4, SIGHUP (when ``run_router`` is given ``reload``) applies a new
configuration in place, without touching a connection: ``router.reload``.

Resource handling: ``run_router`` owns every listener and connection it
starts (in ``Listening``) and releases them in step 4 whatever happened.
Error handling: configuration faults are ``ConfigError`` (the CLI prints one
line, exit 2); nothing a client does ends the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from hostmux.compiled import core_build
from hostmux.config.layered import ConfigError, parse_host_port
from hostmux.http1 import TrustedProxies
from hostmux.limits import ConnectionCounts, FailureLimiter
from hostmux.log import fields
from hostmux.relay import (
    ConnectionSet,
    RelayLimits,
    RequestRecord,
    connection_handler,
    front_door_protocol,
    start_front_door,
)
from hostmux.relay.front_door import log_request
from hostmux.systemd import Notifier
from hostmux.tunnel.websocket import WssAcceptor
from router.activity import Activity, checkpoint_path, tick_interval_s
from router.admin import setup as admin
from router.admin.token import AdminToken
from router.client_certs import ClientCertRoutes, check_route_files, parse_client_cert_routes
from router.config import RouterConfig
from router.holding import HoldingPages, LookupLimit
from router.membership import Membership
from router.one_port import open_listening_socket, serve_one_port
from router.pool import POOL_OPEN_SHARE, PoolSettings
from router.portal import PortalKeys, TunnelEvents
from router.reload import reload_router
from router.ssh.auth import Authenticator, AuthorizedKeys, load_ca_fingerprints
from router.ssh.server import (
    SshAcceptor,
    SshLimits,
    SshSettings,
    acceptor_port,
    start_ssh_server,
)
from router.state import RouterState, dev_ca_pem, file_certificates, front_door_tls, prepare_state
from router.tcp_ports import TcpPorts, TcpSettings, parse_port_range, parse_port_rules
from router.tls import FrontDoorTls
from router.tls_front import HelloRouting, PeekingServer
from router.tunnels import TunnelGateway, TunnelHub
from router.workers.sockets import adopt
from router.workers.worker import end_with_supervisor

if TYPE_CHECKING:
    from hostmux.ops_server import OpsServer
    from router.acme.manager import AcmeManager
    from router.activity_cluster import ClusterActivity
    from router.admin.cluster import ClusterAgent
    from router.cluster.setup import ClusterLink
    from router.operations import RouterOps

log = logging.getLogger("hostmux.router")

T = TypeVar("T")

# How often expired name reservations are forgotten (bounds route-table memory).
_SWEEP_INTERVAL_S = 60.0
# Files a router holds besides browser connections: listeners, logs, and some tunnels.
_FILES_BESIDES_CONNECTIONS = 1024
# Reason: cancelled background tasks end within a loop turn or two; one that does not
# within this long swallowed its cancellation and must not hold up the shutdown.
BACKGROUND_STOP_S = 2.0


@dataclass
class Router:
    """What a router is made of, built before anything listens (step 1)."""

    config: RouterConfig
    state: RouterState
    auth: Authenticator
    hub: TunnelHub
    wss: WssAcceptor
    gateway: TunnelGateway
    connections: ConnectionSet
    ssh_settings: SshSettings
    ssh_limits: SshLimits
    trusted: TrustedProxies
    browsers: ConnectionCounts
    tls: ssl.SSLContext | None
    scheme: str
    link: ClusterLink | None = None  # the router-to-router link (cluster_listen set)
    admin_token: AdminToken | None = None  # admin_listen set (and not a worker)
    admin_agent: ClusterAgent | None = None  # the admin API's side in a router with a registry
    # What a reload (SIGHUP, ``router.reload``) swaps: the certificates new handshakes
    # get (``tls`` is their context) and the limits new browser connections get.
    certificates: FrontDoorTls | None = None
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    events: TunnelEvents | None = None  # events_url set: the queue to the portal
    # Certificates from ACME (acme_directory_url set); its ``status`` is for readiness.
    acme: AcmeManager | None = None
    # Activity, idle state and usage per name (``router.activity``); None: not kept.
    activity: Activity | None = None
    activity_cluster: ClusterActivity | None = None  # with a registry
    # ``[[client_cert_routes]]`` (None: none); re-read on SIGHUP.
    client_certs: ClientCertRoutes | None = None
    # The ClientHello peek of the HTTPS and one-port listeners (``_peeks_hellos``), made
    # once (its counters are the passthrough metrics).
    hellos: HelloRouting | None = None

    def current_limits(self) -> RelayLimits:
        return self.relay_limits

    ops: RouterOps | None = None  # metrics and health (metrics_listen set)

    @property
    def request_callback(self) -> Callable[[RequestRecord], None]:
        """The front door's per-request callback: the access log (and the metrics, with
        metrics_listen), then the tunnel's counters the admin API lists."""
        logged = self.ops.on_request if self.ops is not None else log_request
        count = self.hub.count
        if self.activity is not None:
            active = self.activity.on_request

            def on_request_active(record: RequestRecord) -> None:
                logged(record)
                count(record)
                active(record)

            return on_request_active

        def on_request(record: RequestRecord) -> None:
            logged(record)
            count(record)

        return on_request


@dataclass
class Listening:
    """What the router has bound (step 2), released by ``shut_down_router``."""

    ssh_acceptors: list[SshAcceptor] = field(default_factory=list)
    http_servers: list[asyncio.Server] = field(default_factory=list)
    cluster_servers: list[asyncio.Server] = field(default_factory=list)
    one_port_sockets: list[socket.socket] = field(default_factory=list)
    # https_listen when hellos are peeked first (TLS passthrough, client certificate
    # routes, acme_challenge tls-alpn-01): served by router.tls_front.
    peeking_servers: list[PeekingServer] = field(default_factory=list)
    ops_server: OpsServer | None = None  # metrics_listen (not in a supervisor's worker)
    worker_ops: asyncio.AbstractServer | None = None  # a worker's snapshots for its supervisor
    admin_servers: list[asyncio.Server] = field(default_factory=list)
    addresses: dict[str, list[str]] = field(
        default_factory=lambda: {
            k: [] for k in ("ssh", "https", "http", "one_port", "cluster", "metrics")
        }
    )


async def run_router(
    config: RouterConfig,
    *,
    stop: asyncio.Event | None = None,
    reload: Callable[[], RouterConfig] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); SIGHUP applies ``reload()``'s
    configuration (``router.reload``) when given."""
    router = build_router(config)
    stop = stop or asyncio.Event()
    listening = Listening()
    drain = Drain(router, listening)
    on_hup = None
    if reload is not None:
        load = reload

        def on_hup() -> None:  # a worker's supervisor names what needs a restart, once
            reload_router(router, load, say_restart=not config.worker_index)

    with _signals(stop, router.connections, on_hup, drain):
        try:
            await bind_router(router, listening)
            if router.admin_token is not None:
                backend = admin.router_backend(config, router.hub, drain.start)
                server = await admin.start_admin(config, router.admin_token, backend)
                listening.admin_servers.append(server)
            await serve_router(router, listening, stop)
        finally:
            await shut_down_router(router, listening)
    log.info(fields("router_stopped"))


def build_router(config: RouterConfig) -> Router:
    """Step 1: everything but the listeners; a ConfigError for any bad file or setting."""
    # The operator's TLS files are checked before anything is created or bound.
    certificates = file_certificates(config)
    link_contexts = None
    if config.cluster_listen:
        # Imported here: the link's code is loaded only by routers that use it.
        from router.cluster.setup import link_tls

        link_contexts = link_tls(config)  # its files too, before anything is created
    state = prepare_state(config)
    # The one-port listener always speaks TLS too (the config refuses it without).
    scheme = "https" if config.https_listen or config.one_port_listen else "http"
    hub = TunnelHub(
        domain=config.domain, scheme=scheme, public_port=config.public_port,
        reservation_s=config.name_reservation_s,
    )  # fmt: skip
    hub.pool_settings = pool_settings(config, state)
    agent = None
    if config.registry:
        cluster = hub.cluster = _membership(config, hub)
        agent = admin.cluster_agent(config, hub, lambda: cluster.router_id or "")
    wss = WssAcceptor()
    gateway = TunnelGateway(hub, wss, keep_cookie_domain=config.keep_cookie_domain)
    link = None
    if link_contexts is not None and hub.cluster is not None:
        from router.cluster.setup import build_link

        registry, headers = hub.cluster.registry, gateway.response_headers
        link = build_link(config, link_contexts, hub, registry, headers)
        gateway.forwarder = link.forwarder
    front_tls = front_door_tls(config, state, certificates)
    tls = front_tls.context if front_tls is not None else None
    if config.one_port_listen and tls is None:  # RouterConfig refuses this: say so, not crash
        raise ConfigError("one_port_listen needs TLS (an https_listen or cert files)")
    acme = None
    if config.acme_directory_url and front_tls is not None:
        # Imported here: the ACME client is loaded only by routers that use it (an extra).
        from router.acme import build_acme

        acme, gateway.acme_http = build_acme(config, front_tls)
    client_certs = None
    if config.client_cert_routes:
        client_certs = ClientCertRoutes(parse_client_cert_routes(config.client_cert_routes))
        gateway.client_certs = client_certs
    if link is not None:
        # The holder's own route check for streams from other routers (``wire``).
        link.peers.client_certs = client_certs
    hub.tls_passthrough = config.tls_passthrough
    router = Router(
        config=config,
        state=state,
        auth=_authenticator(config),
        hub=hub,
        wss=wss,
        gateway=gateway,
        connections=ConnectionSet(),
        ssh_settings=SshSettings(
            window_bytes=config.channel_window_bytes,
            keepalive_interval_s=config.ssh_keepalive_interval_s,
            login_timeout_s=config.ssh_login_timeout_s,
            max_pending_opens=config.max_pending_channel_opens,
            dev_ca_pem=dev_ca_pem(state),
        ),
        ssh_limits=SshLimits(
            connections=ConnectionCounts(
                max_total=1_000_000, max_per_key=config.max_ssh_connections_per_key
            ),
            max_tunnels_per_owner=config.max_tunnels_per_key,
            auth_failures=FailureLimiter(
                burst=config.ssh_auth_failures_burst,
                per_minute=config.ssh_auth_failures_per_minute,
            ),
        ),
        trusted=TrustedProxies(config.trusted_proxies),
        browsers=ConnectionCounts(
            max_total=config.max_connections, max_per_key=config.max_connections_per_ip
        ),
        tls=tls,
        scheme=scheme,
        link=link,
        certificates=front_tls,
        relay_limits=config.relay_limits,
        admin_token=admin.admin_token(config),
        admin_agent=agent,
        acme=acme,
        client_certs=client_certs,
    )
    ports = parse_port_range(config.tcp_port_range)
    if ports is not None:
        hub.tcp = TcpPorts(
            TcpSettings(
                ports=ports, listen_host=config.tcp_listen_address,
                max_per_key=config.max_tcp_ports_per_key,
                idle_timeout_s=config.tcp_idle_timeout_s,
                connect_timeout_s=config.connect_timeout_s,
                proxy_protocol=config.tcp_proxy_protocol,
                rules=parse_port_rules(config.tcp_port_rules),
                reuse_port=bool(config.worker_index),
            ),
            counts=router.browsers, reservation_s=config.name_reservation_s,
        )  # fmt: skip
    if hub.tcp is not None and link is not None:
        hub.tcp.forward = link.forwarder.open_port
    if router.auth.portal is not None:
        # Portal mode: instances the portal knows get "starting…", here and (in a
        # cluster) for names no router holds.
        holding = HoldingPages(router.auth.portal, LookupLimit(config.holding_lookups_per_minute))
        gateway.holding = holding
        if link is not None:
            link.forwarder.holding = holding
    if _keeps_activity(config):
        router.activity = hub.activity = Activity(
            idle_after_s=config.idle_after_s,
            min_bytes_per_minute=config.idle_min_bytes_per_minute,
            usage_interval_s=config.usage_interval_s,
            decides=not config.registry,
            checkpoint=(
                checkpoint_path(config.state_dir, config.worker_index)
                if config.events_url else None
            ),
        )  # fmt: skip
    if config.metrics_listen:
        # Imported here: prometheus-client is loaded only by routers that serve metrics.
        from router.operations import RouterOps

        router.ops = RouterOps(router)
    return router


def _keeps_activity(config: RouterConfig) -> bool:
    """Activity and usage are kept where something shows them: events, the admin API,
    per-tunnel metrics (else the request path does not pay for them)."""
    return bool(
        config.events_url or config.admin_listen or config.metrics_per_tunnel
        or config.idle_after_s
    )  # fmt: skip


def check_files(config: RouterConfig) -> None:
    """``check-config``: what ``build_router`` reads before anything listens (certificates,
    CA keys, authorized_keys, the cluster link's files), creating nothing; a ConfigError
    names the first bad one."""
    file_certificates(config)
    if config.portal_ca_keys_file is not None:
        load_ca_fingerprints(config.portal_ca_keys_file)
    AuthorizedKeys(config.authorized_keys_path)  # strict: a bad line is an error here
    admin.check_files(config)
    if config.cluster_listen:
        from router.cluster.setup import link_tls

        link_tls(config)
    if config.acme_directory_url:
        from router.acme import check_acme_files

        check_acme_files(config)
    check_route_files(parse_client_cert_routes(config.client_cert_routes))


async def bind_router(router: Router, listening: Listening) -> None:
    """Step 2: bind every listener into ``listening`` (kept there even when a later one
    fails); a worker serves the sockets its supervisor bound (``listen_fds``) instead."""
    config, hub, bound = router.config, router.hub, listening.addresses
    if router.ops is not None:  # first: /readyz says "starting" while the rest binds
        await _bind_ops(router, router.ops, listening)
    for where, host, port, sock in _listen_on(config, "ssh"):
        acceptor = await _bind(where, _start_ssh(router, host, port, sock=sock))
        listening.ssh_acceptors.append(acceptor)
        bound["ssh"].append(f"{_fmt_host(host)}:{acceptor_port(acceptor)}")
    # SSH over WebSocket: the same SSH server, reached through the HTTPS front door.
    listening.ssh_acceptors.append(await _start_ssh(router, "", 0, tunnel=router.wss))
    for kind, context in (("https", router.tls), ("http", None)):
        for where, host, port, sock in _listen_on(config, kind):
            if kind == "https" and _peeks_hellos(router):
                if sock is None:
                    try:
                        sock = open_listening_socket(host, port)
                    except OSError as exc:
                        raise ConfigError(
                            f"cannot listen on {where}: {exc.strerror or exc}"
                        ) from None
                listening.peeking_servers.append(PeekingServer(sock, _hello_routing(router)))
                bound[kind].append(f"{_fmt_host(host)}:{sock.getsockname()[1]}")
                continue
            server = await _bind(
                where,
                start_front_door(
                    host, port, gateway=router.gateway, limits=router.current_limits,
                    connections=router.connections, counts=router.browsers,
                    trusted_proxies=router.trusted, tls=context,
                    tls_handshake_timeout_s=config.tls_handshake_timeout_s, sock=sock,
                    on_request=router.request_callback,
                ),
            )  # fmt: skip
            listening.http_servers.append(server)
            bound[kind].append(f"{_fmt_host(host)}:{server.sockets[0].getsockname()[1]}")
    for where, host, port, sock in _listen_on(config, "one_port"):
        if sock is None:
            try:
                sock = open_listening_socket(host, port)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        listening.one_port_sockets.append(sock)
        bound["one_port"].append(f"{_fmt_host(host)}:{sock.getsockname()[1]}")
    hub.ssh_port = _port_of((bound["one_port"] or bound["ssh"])[0])
    if hub.tcp is not None:
        await hub.tcp.listen_all()  # with a router link only
    if hub.cluster is not None:  # claims wait for the id, which may name the bound address
        hub.cluster.router_id = config.router_id or config.router_name or bound["ssh"][0]
    if router.link is not None and hub.cluster is not None:
        host, port = parse_host_port(config.cluster_listen, "cluster_listen")
        server = await _bind(config.cluster_listen, router.link.start_server(host, port))
        listening.cluster_servers.append(server)
        bound["cluster"].append(f"{_fmt_host(host)}:{server.sockets[0].getsockname()[1]}")
        hub.cluster.advertise_address = config.cluster_advertise or bound["cluster"][0]
        router.link.forwarder.router_id = hub.cluster.router_id or ""
    if config.public_port == 0:
        hub.set_public_port(
            router.scheme, _port_of((bound["https"] or bound["one_port"] or bound["http"])[0])
        )


async def _bind_ops(router: Router, ops: RouterOps, listening: Listening) -> None:
    """``metrics_listen``: served here, or by the supervisor of this worker (it asks
    this worker for its figures on a unix socket: ``router.workers.ops``)."""
    config = router.config
    ops.listening = listening
    if config.worker_index:
        from router.workers.ops import serve_worker_snapshots

        where = f"the worker's metrics socket in {config.state_dir}"
        listening.worker_ops = await _bind(
            where, serve_worker_snapshots(config.state_dir, config.worker_index, ops.snapshot)
        )
        return
    from hostmux.ops_server import Endpoints, start_ops_server

    server = start_ops_server(config.metrics_listen, Endpoints(ops.metrics, ops.readiness))
    listening.ops_server = server
    listening.addresses["metrics"].append(server.address)


async def serve_router(router: Router, listening: Listening, stop: asyncio.Event) -> None:
    """Step 3: say ``router_ready``, run the background tasks, return once ``stop`` is set.

    It tells systemd too (``Type=notify``), or a worker its supervisor (which
    speaks to systemd for it, ``router.workers.readiness``): READY=1 now,
    STOPPING=1 when it stops, WATCHDOG=1 while it runs if asked.
    """
    config = router.config
    if router.admin_agent is not None:
        await router.admin_agent.first_read()
    _announce_ready(router, listening.addresses)
    if router.ops is not None:
        router.ops.serving = True
    notifier = Notifier()  # a worker's NOTIFY_SOCKET is its supervisor's
    start = asyncio.get_running_loop().create_task
    background = [start(_sweep_reservations(router.hub), name="sweep")]
    notifier.ready(f"serving *.{config.domain}")
    if notifier.watchdog_s is not None:
        background.append(start(notifier.keep_watchdog(), name="watchdog"))
    if config.worker_index:  # a supervisor's worker ends with it (killed: no signal)
        background.append(start(end_with_supervisor(stop), name="supervisor-watch"))
    if router.hub.cluster is not None:
        background.append(start(router.hub.cluster.run(), name="leases"))
    if router.link is not None:
        background.append(start(router.link.forwarder.run(), name="route-cache"))
    if router.admin_agent is not None:
        background.append(start(router.admin_agent.run(), name="admin-agent"))
    if router.acme is not None:  # with a registry (always with workers) its lock decides
        acme = router.acme.run_shared() if config.registry else router.acme.run()
        background.append(start(acme, name="acme"))
    if config.events_url:
        events = TunnelEvents(
            url=config.events_url, secret=config.events_secret.encode(),
            router_name=config.router_name or listening.addresses["ssh"][0],
            router_id=router.hub.cluster.router_id if router.hub.cluster else None,
            timeout_s=config.portal_timeout_s,
        )  # fmt: skip
        router.events = events
        router.hub.observers.append(events.publish)
        background.append(start(events.run(), name="events"))
    if router.activity is not None:
        activity = router.activity
        cluster = router.hub.cluster
        activity.router_id = (
            cluster.router_id if cluster is not None
            else config.router_name or listening.addresses["ssh"][0]
        )  # fmt: skip
        if router.events is not None:
            activity.send = router.events.send
        if activity.checkpoint is not None:
            activity.load()
        if cluster is not None and config.idle_after_s > 0:  # the registry only for idleness
            router.activity_cluster = _cluster_activity(config, activity, cluster)
        background.append(start(_activity_ticks(router), name="activity"))
    for sock in listening.one_port_sockets:
        background.append(start(_serve_one_port(router, sock), name="one-port"))
    for peeking in listening.peeking_servers:
        background.append(start(peeking.serve(), name="https-peek"))
    try:
        await _until_stopped(stop, background)
    finally:
        if router.ops is not None:
            router.ops.stopping = True
        notifier.stopping()
    log.info(fields("router_stopping", connections=len(router.connections)))


async def _until_stopped(stop: asyncio.Event, background: Sequence[asyncio.Task[Any]]) -> None:
    """Wait for ``stop``, then cancel ``background`` and give it ``BACKGROUND_STOP_S``.

    A background task that ends early with an error ends the router (as a
    TaskGroup would); one that does not end when cancelled (a library that
    swallowed the cancellation) is logged and left behind, never waited for:
    a shutdown must not hang on it.
    """
    stopping = asyncio.get_running_loop().create_task(stop.wait())
    try:
        await asyncio.wait([stopping, *background], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for task in background:
            task.cancel()
    _, stuck = await asyncio.wait(background, timeout=BACKGROUND_STOP_S)
    for task in stuck:
        log.warning(fields("background_task_stuck", task=task.get_name(), action="left behind"))
    for task in background:
        error = task.exception() if task.done() and not task.cancelled() else None
        if error is not None:
            raise error


class Drain:
    """A drain started by the admin API or SIGUSR2: ``drain_router`` once, in a task."""

    def __init__(self, router: Router, listening: Listening) -> None:
        self._router = router
        self._listening = listening
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Drain started={self._task is not None}>"

    def start(self) -> list[str]:
        """Start draining (again: nothing more); who drains, for the admin API's answer."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                drain_router(self._router, self._listening), name="drain"
            )
        cluster = self._router.hub.cluster
        if cluster is not None and cluster.router_id:
            return [f"router {cluster.router_id} (pid {os.getpid()})"]
        return [f"router pid {os.getpid()}"]


async def drain_router(router: Router, listening: Listening) -> None:
    """SIGTERM's shutdown without the exit: stop accepting browsers and tunnel clients,
    release this router's names in the registry, give requests in flight
    ``shutdown_grace_s``, then close every tunnel (its clients reconnect, to another
    router). The process stays, the admin listener answering, until SIGTERM."""
    hub = router.hub
    tunnels, connections = len(hub.tunnels()), len(router.connections)
    log.info(fields("drain_started", tunnels=tunnels, connections=connections))
    if router.ops is not None:  # /readyz: 503, a load balancer takes the router out
        router.ops.stopping = True
    for server in [*listening.cluster_servers, *listening.http_servers]:
        server.close()
    for peeking in listening.peeking_servers:
        peeking.close()  # its passthrough connections go on until the tunnels close
    for peeking in listening.peeking_servers:
        await peeking.wait_closed()  # its socket closes in the accepting task
    for acceptor in listening.ssh_acceptors:
        acceptor.close()
    if hub.cluster is not None:
        await hub.cluster.leave()
    grace_s = router.config.shutdown_grace_s
    if router.link is None:
        await router.connections.drain(grace_s)
    else:
        await asyncio.gather(router.connections.drain(grace_s), router.link.peers.drain(grace_s))
    closed = hub.close_tunnels(hub.tunnels(), "the router is draining")
    log.info(fields("drain_done", tunnels_closed=closed))


async def shut_down_router(router: Router, listening: Listening) -> None:
    """Step 4: stop accepting, release this router's leases (cluster), drain browser
    connections (bounded), then close the SSH side."""
    for server in [*listening.cluster_servers, *listening.http_servers]:
        server.close()
    for peeking in listening.peeking_servers:
        peeking.close()
    for server in listening.admin_servers:
        admin.close_admin(router.config, server)
    cluster = router.hub.cluster
    if cluster is not None:  # names move to other routers now, not at lease expiry
        await cluster.leave()
    grace_s = router.config.shutdown_grace_s
    if router.link is None:
        await router.connections.drain(grace_s)
    else:  # streams from peers drain like browser connections, at the same time
        await asyncio.gather(router.connections.drain(grace_s), router.link.peers.drain(grace_s))
    if router.hub.tcp is not None:
        await router.hub.tcp.aclose()
    await _keep_activity(router)
    for acceptor in listening.ssh_acceptors:
        acceptor.close()
    for acceptor in listening.ssh_acceptors:
        await acceptor.wait_closed()
    await router.wss.aclose()
    await router.auth.aclose()
    if router.link is not None:
        await router.link.pool.close()
    if cluster is not None:
        await cluster.aclose()
    if listening.worker_ops is not None:
        from router.workers.ops import remove_worker_socket

        listening.worker_ops.close()
        remove_worker_socket(router.config.state_dir, router.config.worker_index)
    if listening.ops_server is not None:  # last: /readyz said "stopping" all along
        await listening.ops_server.close()


def _start_ssh(
    router: Router, host: str, port: int, *, tunnel: object = (), sock: socket.socket | None = None
) -> Awaitable[SshAcceptor]:
    return start_ssh_server(
        router.hub, router.auth, router.state.host_key, host, port,
        router.ssh_settings, router.ssh_limits, tunnel=tunnel, sock=sock,
    )  # fmt: skip


def _listen_on(config: RouterConfig, kind: str) -> list[tuple[str, str, int, socket.socket | None]]:
    """``(where, host, port, socket)`` per listener of ``kind``: its ``*_listen`` addresses
    (socket None: bind it), or in a worker the sockets inherited through ``listen_fds``."""
    if not config.listen_fds:
        values: list[str] = getattr(config, f"{kind}_listen")
        return [(v, *parse_host_port(v, f"{kind}_listen"), None) for v in values]
    listeners: list[tuple[str, str, int, socket.socket | None]] = []
    for fd in config.inherited_sockets()[kind]:
        try:
            sock = adopt(fd)
            host, port = sock.getsockname()[:2]
        except OSError as exc:
            raise ConfigError(f"listen_fds: {kind}={fd}: {exc.strerror or exc}") from None
        listeners.append((f"{kind}={fd}", host, port, sock))
    return listeners


async def _serve_one_port(router: Router, sock: socket.socket) -> None:
    config, wss = router.config, router.wss
    assert router.tls is not None  # build_router refused one_port_listen without TLS
    handlers = {
        scheme: connection_handler(
            scheme, gateway=router.gateway, limits=router.current_limits,
            connections=router.connections, counts=router.browsers,
            trusted_proxies=router.trusted, on_request=router.request_callback,
        )
        for scheme in ("https", "http")
    }  # fmt: skip
    await serve_one_port(
        sock, ssh_factory=lambda: wss.factory, https=handlers["https"], http=handlers["http"],
        tls=router.tls, tls_handshake_timeout_s=config.tls_handshake_timeout_s,
        sniff_timeout_s=config.tls_handshake_timeout_s,
        hellos=_hello_routing(router) if _peeks_hellos(router) else None,
    )  # fmt: skip


def _peeks_hellos(router: Router) -> bool:
    """Whether TLS connections are read up to their ClientHello first (``router.tls_front``)."""
    acme = router.acme
    return bool(
        router.config.tls_passthrough
        or router.client_certs
        or (acme is not None and acme.tls_alpn is not None)
    )


def _hello_routing(router: Router) -> HelloRouting:
    """The HTTPS front door behind a ClientHello peek: passthrough, client certificates, ACME
    (one per router, shared by its listeners)."""
    if router.hellos is None:
        router.hellos = _new_hello_routing(router)
    return router.hellos


def _new_hello_routing(router: Router) -> HelloRouting:
    config = router.config
    assert router.tls is not None and router.certificates is not None
    client_certs = router.client_certs
    protocol = front_door_protocol(
        "https", gateway=router.gateway, limits=router.current_limits,
        connections=router.connections, counts=router.browsers,
        trusted_proxies=router.trusted, on_request=router.request_callback,
        client_certificate=client_certs.certificate_of if client_certs else None,
    )  # fmt: skip
    return HelloRouting(
        protocol=protocol, default=router.tls,
        context_for_host=router.certificates.context_for_host, domain=config.domain,
        handshake_timeout_s=config.tls_handshake_timeout_s, counts=router.browsers,
        connect_timeout_s=config.connect_timeout_s, idle_timeout_s=config.tcp_idle_timeout_s,
        passthrough=router.hub.passthrough_for if config.tls_passthrough else None,
        elsewhere=(
            router.link.forwarder.passthrough_elsewhere
            if config.tls_passthrough and router.link is not None
            else None
        ),
        client_certs=client_certs,
        challenges=router.acme.tls_alpn if router.acme is not None else None,
    )  # fmt: skip


def _announce_ready(router: Router, bound: dict[str, list[str]]) -> None:
    config, state = router.config, router.state
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log.info(
        fields(
            "router_ready", domain=config.domain, ssh=",".join(bound["ssh"]),
            https=",".join(bound["https"]) or None, http=",".join(bound["http"]) or None,
            host_key=state.host_key_fingerprint, ca=state.ca_cert,
            pid=os.getpid(), core=core_build(), one_port=",".join(bound["one_port"]) or None,
            open_files=open_files, cluster=",".join(bound["cluster"]) or None,
            router_id=router.hub.cluster.router_id if router.hub.cluster is not None else None,
            metrics=",".join(bound["metrics"]) or None,
        )
    )  # fmt: skip
    if open_files < config.max_connections + _FILES_BESIDES_CONNECTIONS:
        log.warning(
            fields(
                "open_files_limit_low", open_files=open_files,
                max_connections=config.max_connections,
                hint="raise the hard limit (systemd: LimitNOFILE=) above max_connections",
            )
        )  # fmt: skip
    if config.worker_index <= 1:  # the same ports for every worker: said once
        _print_welcome(config, bound, state, router.hub)


@contextlib.contextmanager
def _signals(
    stop: asyncio.Event,
    connections: ConnectionSet,
    on_hup: Callable[[], None] | None,
    drain: Drain,
) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``; SIGUSR1 logs the live counts (an operator's leak check);
    SIGHUP calls ``on_hup`` (a reload), when given; SIGUSR2 starts a drain (``drain_router``)."""
    loop = asyncio.get_running_loop()
    handled = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1]
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _log_stats, connections)
    loop.add_signal_handler(signal.SIGUSR2, drain.start)
    handled.append(signal.SIGUSR2)
    if on_hup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        handled.append(signal.SIGHUP)
    try:
        yield
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _log_stats(connections: ConnectionSet) -> None:
    """On SIGUSR1: one ``event=stats`` line with the live task, descriptor and connection counts."""
    try:
        fds: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (not Linux)
        fds = None
    log.info(
        fields(
            "stats", tasks=len(asyncio.all_tasks()), fds=fds, threads=threading.active_count(),
            connections=len(connections),
        )
    )  # fmt: skip


async def _bind(where: str, starting: Awaitable[T]) -> T:
    """Await a listener; a bind failure becomes a one-line ConfigError."""
    try:
        return await starting
    except OSError as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None


def _authenticator(config: RouterConfig) -> Authenticator:
    portal = None
    if config.portal_keys_url:
        portal = PortalKeys(
            config.portal_keys_url,
            timeout_s=config.portal_timeout_s,
            ttl_s=config.portal_cache_ttl_s,
            negative_ttl_s=config.portal_negative_cache_ttl_s,
        )
    cas: frozenset[str] = frozenset()
    if config.portal_ca_keys_file is not None:
        cas = load_ca_fingerprints(config.portal_ca_keys_file)
    return Authenticator(
        AuthorizedKeys(config.authorized_keys_path), portal=portal, ca_fingerprints=cas
    )


def pool_settings(config: RouterConfig, state: RouterState) -> PoolSettings:
    """The pools' options; the affinity cookie's key is derived from the SSH host key, so
    every worker of a router (and routers that share a host key) accepts the same cookies."""
    secret = hashlib.sha256(b"hostmux pool cookie\0" + state.host_key.read_bytes()).digest()
    return PoolSettings(
        secret=secret, affinity=config.pool_affinity, backoff_s=config.pool_backoff_s,
        # Two members get a try within the relay's connect timeout.
        open_timeout_s=config.connect_timeout_s * POOL_OPEN_SHARE,
    )  # fmt: skip


def _membership(config: RouterConfig, hub: TunnelHub) -> Membership:
    # Imported here: redis-py is loaded only by routers that use a registry.
    from router.registry.redis_store import RedisRegistry

    try:
        registry = RedisRegistry.from_url(
            config.registry, prefix=config.registry_prefix,
            reservation_s=config.name_reservation_s, lease_ttl_s=config.lease_ttl_s,
        )  # fmt: skip
    except ValueError as exc:  # redis-py's verdict on the URL
        raise ConfigError(f"registry: {exc}") from None
    return Membership(registry, hub, reservation_s=config.name_reservation_s)


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _cluster_activity(
    config: RouterConfig, activity: Activity, cluster: Membership
) -> ClusterActivity:
    # Imported here, as the registry: redis-py is loaded only by routers that use one.
    from router.activity_cluster import ClusterActivity
    from router.registry.activity_share import ActivityShare

    share = ActivityShare.from_url(config.registry, prefix=config.registry_prefix)
    tick_s = tick_interval_s(config.idle_after_s)
    return ClusterActivity(activity, share, cluster.registry.lookup, tick_s=tick_s)


async def _activity_ticks(router: Router) -> None:
    """``router.activity``'s tick (and the cluster's round) every few seconds."""
    activity, hub = router.activity, router.hub
    assert activity is not None
    tick_s = tick_interval_s(activity.idle_after_s)
    while True:
        await asyncio.sleep(tick_s)  # a coarse timer (rule 2), not a synchronisation
        held = [(name, tunnel.since) for name, tunnel in hub.routes.held()]
        activity.tick(router.connections.spliced(), held)
        if router.activity_cluster is not None:
            await router.activity_cluster.round([name for name, _ in held])


async def _keep_activity(router: Router) -> None:
    """On exit: the last WebSocket bytes counted and usage checkpointed (rule 5), the
    activity lease given up."""
    activity = router.activity
    if activity is None:
        return
    activity.sample(router.connections.spliced(), activity.clock())
    if activity.checkpoint is not None and activity.loaded:
        activity.save()
        log.info(fields("usage_checkpoint_saved", path=activity.checkpoint))
    if router.activity_cluster is not None:
        await router.activity_cluster.leave()


async def _sweep_reservations(hub: TunnelHub) -> None:
    while True:
        await asyncio.sleep(_SWEEP_INTERVAL_S)
        hub.routes.sweep()
        if hub.tcp is not None:
            hub.tcp.routes.sweep()


def _print_welcome(
    config: RouterConfig, bound: dict[str, list[str]], state: RouterState, hub: TunnelHub
) -> None:
    if not sys.stderr.isatty():
        return
    ssh_host, ssh_port = bound["ssh"][0].rsplit(":", 1)
    lines = [
        "",
        f"hostmux router for *.{config.domain}",
        f"  tunnel:  ssh -p {ssh_port} -R myapp:80:localhost:3000 {ssh_host}",
        f"  then:    {hub.url_for('myapp')}",
        f"  keys:    {config.authorized_keys_path} (OpenSSH authorized_keys)",
        f"  host key {state.host_key_fingerprint}",
    ]
    if state.ca_cert is not None:
        lines.append(f"  trust:   {state.ca_cert} (development CA for *.{config.domain})")
    print("\n".join(lines) + "\n", file=sys.stderr, flush=True)
