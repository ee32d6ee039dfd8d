"""Wires the router together: state, SSH listeners, front doors, shutdown.

Resource handling: ``run_router`` owns every listener and connection it
starts; on SIGTERM/SIGINT it stops accepting, gives in-flight browser
connections ``shutdown_grace_s`` to finish, then closes the SSH side (tunnel
clients reconnect, to this router when it is back or to another).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import ssl
import sys
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import keys
from hostmux.config.layered import ConfigError, parse_host_port
from hostmux.http1.headers import TrustedProxies
from hostmux.limits import ConnectionCounts, FailureLimiter
from hostmux.log import fields
from hostmux.relay.front_door import ConnectionSet, connection_handler, start_front_door
from hostmux.tunnel.websocket import WssAcceptor
from router.config import RouterConfig
from router.one_port import open_listening_socket, serve_one_port
from router.portal import PortalKeys, TunnelEvents
from router.ssh.auth import Authenticator, AuthorizedKeys, load_ca_fingerprints
from router.ssh.server import SshLimits, SshSettings, acceptor_port, start_ssh_server
from router.tls import DevCertificates, configured_tls_context
from router.tunnels import TunnelGateway, TunnelHub

log = logging.getLogger("hostmux.router")

T = TypeVar("T")

# How often expired name reservations are forgotten (bounds route-table memory).
_SWEEP_INTERVAL_S = 60.0
# Files a router holds besides browser connections: listeners, logs, and some tunnels.
_FILES_BESIDES_CONNECTIONS = 1024


@dataclass(frozen=True)
class _State:
    host_key: Path
    host_key_fingerprint: str
    tls_cert: Path | None
    tls_key: Path | None
    dev_tls: keys.TlsFiles | None  # set when the development CA serves TLS

    @property
    def ca_cert(self) -> Path | None:
        return self.dev_tls.ca_cert if self.dev_tls else None


def prepare_state(config: RouterConfig) -> _State:
    """Create the host key, dev CA and authorized_keys on first run."""
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pair, created = keys.load_or_create_host_key(config.host_key_path)
    except (OSError, keys.KeysError) as exc:
        raise ConfigError(f"host key {config.host_key_path}: {exc}") from None
    if created:
        log.info(fields("host_key_created", path=str(config.host_key_path), key=pair.fingerprint))
    tls_cert, tls_key, dev_tls = config.tls_cert_file, config.tls_key_file, None
    if config.https_listen and tls_cert is None:
        try:
            dev_tls, created = keys.ensure_dev_tls(config.state_dir / "tls", config.domain)
        except (OSError, keys.KeysError) as exc:
            raise ConfigError(f"development CA in {config.state_dir / 'tls'}: {exc}") from None
        if created:
            log.info(fields("dev_ca_created", ca=dev_tls.ca_cert, cert=dev_tls.cert))
    if config.authorized_keys_file is None and not config.authorized_keys_path.exists():
        _seed_authorized_keys(config.authorized_keys_path)
    return _State(config.host_key_path, pair.fingerprint, tls_cert, tls_key, dev_tls)


def _seed_authorized_keys(path: Path) -> None:
    """First run with the default file: trust the user's own SSH keys, as a try-out."""
    home_keys = sorted(Path("~/.ssh").expanduser().glob("id_*.pub"))
    lines = [p.read_text().strip() for p in home_keys if p.is_file()]
    header = "# Keys allowed to open tunnels (OpenSSH authorized_keys format).\n"
    header += '# Restrict a key to names with: permitlisten="name1",permitlisten="dev-*" ssh-...\n'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(header + "".join(line + "\n" for line in lines))
    log.info(fields("authorized_keys_created", path=str(path), keys=len(lines)))


async def run_router(config: RouterConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set)."""
    # The operator's TLS files are checked before anything is created or bound.
    file_tls = _file_tls(config)
    state = prepare_state(config)
    auth = _authenticator(config)
    # The one-port listener always speaks TLS too (the config refuses it without).
    scheme = "https" if config.https_listen or config.one_port_listen else "http"
    hub = TunnelHub(
        domain=config.domain,
        scheme=scheme,
        public_port=config.public_port,
        reservation_s=config.name_reservation_s,
    )
    wss = WssAcceptor()
    gateway = TunnelGateway(hub, wss, keep_cookie_domain=config.keep_cookie_domain)
    connections = ConnectionSet()
    limits = config.relay_limits
    settings = SshSettings(
        window_bytes=config.channel_window_bytes,
        keepalive_interval_s=config.ssh_keepalive_interval_s,
        login_timeout_s=config.ssh_login_timeout_s,
        max_pending_opens=config.max_pending_channel_opens,
        dev_ca_pem=_read_dev_ca(state),
    )
    ssh_limits = SshLimits(
        connections=ConnectionCounts(
            max_total=1_000_000, max_per_key=config.max_ssh_connections_per_key
        ),
        max_tunnels_per_owner=config.max_tunnels_per_key,
        auth_failures=FailureLimiter(
            burst=config.ssh_auth_failures_burst, per_minute=config.ssh_auth_failures_per_minute
        ),
    )
    trusted = TrustedProxies(config.trusted_proxies)
    browsers = ConnectionCounts(
        max_total=config.max_connections, max_per_key=config.max_connections_per_ip
    )
    tls = file_tls or _dev_tls(config, state)
    if config.one_port_listen and tls is None:  # RouterConfig refuses this: say so, not crash
        raise ConfigError("one_port_listen needs TLS (an https_listen or cert files)")

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # An operator's (and bench/soak.py's) leak check: the task count is visible nowhere else.
    loop.add_signal_handler(signal.SIGUSR1, _log_stats, connections)

    ssh_acceptors = []
    http_servers: list[asyncio.Server] = []
    bound: dict[str, list[str]] = {"ssh": [], "https": [], "http": []}
    try:
        for value in config.ssh_listen:
            host, port = parse_host_port(value, "ssh_listen")
            acceptor = await _bind(
                value,
                start_ssh_server(hub, auth, state.host_key, host, port, settings, ssh_limits),
            )
            ssh_acceptors.append(acceptor)
            bound["ssh"].append(f"{_fmt_host(host)}:{acceptor_port(acceptor)}")
        # SSH over WebSocket: the same SSH server, reached through the HTTPS front door.
        ssh_acceptors.append(
            await start_ssh_server(
                hub, auth, state.host_key, "", 0, settings, ssh_limits, tunnel=wss
            )
        )
        for kind, values, context in (
            ("https", config.https_listen, tls),
            ("http", config.http_listen, None),
        ):
            for value in values:
                host, port = parse_host_port(value, f"{kind}_listen")
                server = await _bind(
                    value,
                    start_front_door(
                        host, port, gateway=gateway, limits=limits, connections=connections,
                        counts=browsers, trusted_proxies=trusted,
                        tls=context, tls_handshake_timeout_s=config.tls_handshake_timeout_s,
                    ),
                )  # fmt: skip
                http_servers.append(server)
                real_port = server.sockets[0].getsockname()[1]
                bound[kind].append(f"{_fmt_host(host)}:{real_port}")
        one_port_sockets = []
        for value in config.one_port_listen:
            host, port = parse_host_port(value, "one_port_listen")
            try:
                sock = open_listening_socket(host, port)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {value}: {exc.strerror or exc}") from None
            one_port_sockets.append(sock)
            bound.setdefault("one_port", []).append(f"{_fmt_host(host)}:{sock.getsockname()[1]}")
        hub.ssh_port = int((bound.get("one_port") or bound["ssh"])[0].rsplit(":", 1)[1])
        if config.public_port == 0:
            first = (bound["https"] or bound.get("one_port") or bound["http"])[0]
            hub.set_public_port(scheme, int(first.rsplit(":", 1)[1]))

        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        log.info(
            fields(
                "router_ready", domain=config.domain, ssh=",".join(bound["ssh"]),
                https=",".join(bound["https"]) or None, http=",".join(bound["http"]) or None,
                host_key=state.host_key_fingerprint, ca=state.ca_cert,
                pid=os.getpid(), one_port=",".join(bound.get("one_port", [])) or None,
                open_files=open_files,
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
        _print_welcome(config, bound, state, hub)
        async with asyncio.TaskGroup() as tg:
            background = [tg.create_task(_sweep_reservations(hub))]
            if config.events_url:
                events = TunnelEvents(
                    url=config.events_url,
                    secret=config.events_secret.encode(),
                    router_name=config.router_name or bound["ssh"][0],
                    timeout_s=config.portal_timeout_s,
                )
                hub.observers.append(lambda event, name, url: events.publish(event, name, url))
                background.append(tg.create_task(events.run()))
            for sock in one_port_sockets:
                assert tls is not None  # checked before listening
                handlers = {
                    scheme: connection_handler(
                        scheme, gateway=gateway, limits=limits, connections=connections,
                        counts=browsers, trusted_proxies=trusted,
                    )
                    for scheme in ("https", "http")
                }  # fmt: skip
                background.append(
                    tg.create_task(
                        serve_one_port(
                            sock, ssh_factory=lambda: wss.factory, https=handlers["https"],
                            http=handlers["http"], tls=tls,
                            tls_handshake_timeout_s=config.tls_handshake_timeout_s,
                            sniff_timeout_s=config.tls_handshake_timeout_s,
                        )
                    )
                )  # fmt: skip
            await stop.wait()
            for task in background:
                task.cancel()
        log.info(fields("router_stopping", connections=len(connections)))
    finally:
        for server in http_servers:
            server.close()
        await connections.drain(config.shutdown_grace_s)
        for acceptor in ssh_acceptors:
            acceptor.close()
        for acceptor in ssh_acceptors:
            await acceptor.wait_closed()
        await wss.aclose()
        await auth.aclose()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
    log.info(fields("router_stopped"))


def _file_tls(config: RouterConfig) -> ssl.SSLContext | None:
    """TLS from the operator's files, when something serves TLS; a ConfigError names a bad file."""
    cert, key = config.tls_cert_file, config.tls_key_file
    if cert is None or key is None or not (config.https_listen or config.one_port_listen):
        return None
    return configured_tls_context(cert, key)


def _dev_tls(config: RouterConfig, state: _State) -> ssl.SSLContext | None:
    """TLS from the development CA, when it serves (no files configured)."""
    if state.dev_tls is None:
        return None
    try:
        return DevCertificates(state.dev_tls, config.domain).default_context
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"development CA in {config.state_dir / 'tls'}: {exc}") from None


def _read_dev_ca(state: _State) -> str | None:
    """The development CA's certificate for the ``ca`` command (read once: it is made at start)."""
    if state.ca_cert is None:
        return None
    try:
        return state.ca_cert.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"development CA {state.ca_cert}: {exc}") from None


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


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _sweep_reservations(hub: TunnelHub) -> None:
    while True:
        await asyncio.sleep(_SWEEP_INTERVAL_S)
        hub.routes.sweep()


def _print_welcome(
    config: RouterConfig, bound: dict[str, list[str]], state: _State, hub: TunnelHub
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
