"""The auth helper: a reverse proxy in front of the app that lets only the instance's users in.

It is the router's relay (``hostmux.relay.relay``: llhttp, streaming, back-pressure,
WebSocket splice, and the express path for small kept-alive requests) behind the
router's front door, with a different gateway (``_auth_gateway``): instead of
routing by Host it checks the session cookie, runs the OAuth2 login against the
portal, and passes allowed requests to the app over TCP with the user's name
attached.

Resource handling: ``run_authhelper`` owns its listener and every browser
connection (via ``ConnectionSet``); SIGTERM stops accepting and lets in-flight
requests finish for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from hostmux.compiled import core_build
from hostmux.config.layered import ConfigError, parse_host_port
from hostmux.limits import ConnectionCounts
from hostmux.log import fields
from hostmux.relay import ConnectionSet, RelayLimits, start_front_door

from ._app_connections import AppConnections
from ._audit import VisitorAudit
from ._auth_gateway import AuthGateway
from ._config import AuthHelperConfig
from ._oauth import PortalOAuth
from ._portal_client import PortalClient
from ._revocations import Revocations, load_revocations
from ._session import CookieSealer, new_cookie_key

log = logging.getLogger("hostmux.authhelper")

# On SIGTERM, requests in flight get this long (as the router's default).
SHUTDOWN_GRACE_S = 10.0
# Connections held at once (the router's default max_connections).
_MAX_CONNECTIONS = 10_000


def load_cookie_keys(config: AuthHelperConfig) -> list[str]:
    if config.cookie_keys:
        return list(config.cookie_keys)
    path = config.cookie_keys_file
    assert path is not None
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_cookie_key() + "\n")
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _load_revocations(config: AuthHelperConfig) -> Revocations:
    lifetime = config.session_lifetime_s
    if config.state_dir is None:
        log.warning(fields("revocations_in_memory", hint="set state_dir to keep them"))
        return Revocations(lifetime)
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return load_revocations(config.state_dir, lifetime)
    except OSError as exc:
        raise ConfigError(f"state_dir: {config.state_dir}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"state_dir: {exc}") from None


def _visitor_audit(config: AuthHelperConfig) -> VisitorAudit:
    key = None
    if config.instance_key_file is not None:
        import keys  # the JWT stack: only with a key to sign with

        try:
            key = keys.InstanceKey.load(config.instance_key_file)
        except keys.KeysError as exc:
            raise ConfigError(f"instance_key_file: {exc}") from None
    return VisitorAudit(
        config.instance_id,
        audit_url=f"{config.portal_url.rstrip('/')}/instances/{config.instance_id}/audit",
        key=key,
        issuer=config.jwt_iss or config.instance_id,
        kid=config.jwt_kid or None,
        queue_max=config.audit_queue_max,
        batch_max=config.audit_batch_max,
        flush_interval_s=config.audit_flush_interval_s,
    )


async def run_authhelper(config: AuthHelperConfig, *, stop: asyncio.Event | None = None) -> None:
    try:
        sealer = CookieSealer(
            load_cookie_keys(config), config.instance_id,
            session_lifetime_s=config.session_lifetime_s,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"cookie keys: {exc}") from None
    revocations = _load_revocations(config)
    portal = PortalClient(config.portal_url, config.instance_id)
    app = AppConnections(*parse_host_port(config.app, "app"), max_idle=config.app_idle_connections)
    audit = _visitor_audit(config)
    gateway = AuthGateway(
        config, sealer, PortalOAuth(config.portal_url, config.instance_id), portal, revocations,
        app, audit,
    )  # fmt: skip
    connections = ConnectionSet()
    limits = RelayLimits()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # Its only browser-side peer is the listener (one address): no per-IP cap.
    counts = ConnectionCounts(max_total=_MAX_CONNECTIONS, max_per_key=_MAX_CONNECTIONS)
    host, port = parse_host_port(config.listen, "listen")
    try:
        # The router's front door: each connection a ``TransportStream``, so small
        # kept-alive requests take the relay's express path (``hostmux.relay.express``)
        # to the app's pooled connections (``_app_connections``).
        server = await start_front_door(
            host, port, gateway=gateway, limits=limits, connections=connections, counts=counts,
            tls=None, tls_handshake_timeout_s=0.0, on_request=gateway.on_request,
        )  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
    bound = server.sockets[0].getsockname()
    ops = None
    if config.metrics_listen:  # prometheus-client is loaded only then
        from hostmux.ops_server import Endpoints, start_ops_server

        from ._metrics import HelperOps

        helper_ops = HelperOps(gateway.counts, audit)
        ops = start_ops_server(
            config.metrics_listen, Endpoints(helper_ops.metrics, helper_ops.readiness)
        )
    log.info(fields("authhelper_ready", listen=f"{bound[0]}:{bound[1]}", app=config.app,
                    instance=config.instance_id, portal=config.portal_url,
                    metrics=ops.address if ops is not None else None,
                    core=core_build()))  # fmt: skip
    audit_stop = asyncio.Event()
    audit_task = asyncio.create_task(audit.run(audit_stop))
    try:
        await stop.wait()
    finally:
        if ops is not None:
            await ops.close()
        server.close()
        await connections.drain(SHUTDOWN_GRACE_S)
        app.close()
        audit_stop.set()  # after the drain: the requests that finished in it are recorded
        await audit_task
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await portal.aclose()
    log.info(fields("authhelper_stopped"))
