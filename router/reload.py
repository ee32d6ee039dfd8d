"""SIGHUP: read the configuration again and apply what can change without a restart.

Rules:

1. The configuration is read from the same sources as at start (the TOML file,
   the environment, the command line). One that does not load is refused
   whole: ``reload_failed`` says why and everything stays as it was.
2. What a reload applies (``RELOADABLE``): the TLS certificates and keys
   (``tls_cert_file``/``tls_key_file``, ``tls_cert_dir``), ``authorized_keys``,
   the portal CA keys, the browser and SSH limits, the HTTP timeouts, the
   portal's timeout and cache lifetimes, the pool options, the log level,
   ``[[client_cert_routes]]`` (their CA and CRL files read again, even when the
   tables did not change; from none to some or back needs a restart). New TLS
   handshakes get the new certificates and client certificate routes;
   connections already made keep theirs; new browser connections get the new
   limits and timeouts; no tunnel and no browser connection is dropped.
3. Any other option that changed (listen addresses, workers, registry, ...)
   needs a restart: one ``reload_needs_restart`` line names them all (said by
   the supervisor, not by each of its workers), and their old values stay.
4. A new file that cannot be used (a certificate without its key, an
   unreadable CA file) keeps the old one: one ``reload_kept`` line names the
   file and says why; the rest of the reload goes ahead.
5. Last, one ``reloaded`` line lists the options whose new values are in use.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from hostmux.config.layered import ConfigError
from hostmux.log import fields
from router.client_certs import parse_client_cert_routes
from router.config import RouterConfig
from router.pool import POOL_OPEN_SHARE
from router.tls import load_certificates

if TYPE_CHECKING:
    from router.server import Router

log = logging.getLogger("hostmux.router")

_TLS_FILES = ("tls_cert_file", "tls_key_file", "tls_cert_dir")
_KEY_FILES = ("authorized_keys_file", "portal_ca_keys_file")
_BROWSER_LIMITS = ("max_connections", "max_connections_per_ip")
_PORTAL_TIMES = (
    "portal_timeout_s", "portal_cache_ttl_s", "portal_negative_cache_ttl_s",
    "holding_lookups_per_minute",
)  # fmt: skip
_SSH_LIMITS = (
    "max_ssh_connections_per_key", "max_tunnels_per_key", "ssh_auth_failures_burst",
    "ssh_auth_failures_per_minute",
)  # fmt: skip
# The fields of ``RouterConfig.relay_limits``: a new browser connection takes them.
_RELAY_LIMITS = (
    "header_timeout_s", "keepalive_timeout_s", "body_timeout_s", "send_timeout_s",
    "connect_timeout_s", "response_timeout_s", "upstream_idle_timeout_s",
    "websocket_idle_timeout_s", "max_header_bytes", "max_requests_per_connection",
)  # fmt: skip
RELOADABLE = frozenset(
    (
        *_TLS_FILES,
        *_KEY_FILES,
        *_BROWSER_LIMITS,
        *_SSH_LIMITS,
        *_RELAY_LIMITS,
        *_PORTAL_TIMES,
        "pool_affinity",
        "pool_backoff_s",
        "log_level",
        "client_cert_routes",
    )
)
# Set by the supervisor for each worker, the same on every reading.
_NOT_OPTIONS = frozenset({"worker_index", "listen_fds"})


def needs_restart(old: RouterConfig, new: RouterConfig) -> list[str]:
    """The options that changed from ``old`` to ``new`` and only a restart applies."""
    changed = [
        f.name
        for f in dataclasses.fields(RouterConfig)
        if f.name not in RELOADABLE
        and f.name not in _NOT_OPTIONS
        and getattr(old, f.name) != getattr(new, f.name)
    ]
    if (old.tls_cert_file is None) != (new.tls_cert_file is None):
        # From the development CA to files or back: the state a router starts with.
        changed += [name for name in ("tls_cert_file", "tls_key_file") if name not in changed]
    if bool(old.client_cert_routes) != bool(new.client_cert_routes):
        # With routes the HTTPS listener reads each ClientHello first: the listener changes.
        changed.append("client_cert_routes")
    return changed


def reload_router(
    router: Router, load: Callable[[], RouterConfig], *, say_restart: bool = True
) -> None:
    """Read the configuration with ``load`` and apply it to ``router`` (the module's rules);
    ``say_restart`` False: a supervisor names what needs a restart, not its workers."""
    old = router.config
    try:
        new = load()
    except ConfigError as exc:
        log.error(fields("reload_failed", reason=str(exc), action="kept the running config"))
        return
    restart = needs_restart(old, new)
    if restart and say_restart:
        log.warning(fields("reload_needs_restart", options=",".join(restart)))
    values = {name: getattr(new, name) for name in RELOADABLE if name not in restart}
    values.update(_apply_files(router, old, new, values))
    router.config = effective = dataclasses.replace(old, **values)
    _apply_limits(router, effective)
    logging.getLogger().setLevel(effective.log_level.upper())
    changed = [n for n in sorted(RELOADABLE) if getattr(old, n) != getattr(effective, n)]
    log.info(fields("reloaded", changed=",".join(changed) or None))


def _apply_files(
    router: Router, old: RouterConfig, new: RouterConfig, values: dict[str, object]
) -> dict[str, object]:
    """Load the new certificates and key files; the old values of those that were kept."""
    kept: dict[str, object] = {}
    if router.certificates is not None and "tls_cert_file" in values:
        try:
            router.certificates.replace(
                load_certificates(new.tls_cert_file, new.tls_key_file, new.tls_cert_dir)
            )
        except ConfigError as exc:
            log.warning(fields("reload_kept", what="certificates", reason=str(exc)))
            kept.update({name: getattr(old, name) for name in _TLS_FILES})
    if router.client_certs is not None and "client_cert_routes" in values:
        try:  # read again even when unchanged: the CA or CRL files may have changed
            router.client_certs.replace(parse_client_cert_routes(new.client_cert_routes))
        except ConfigError as exc:
            log.warning(fields("reload_kept", what="client_cert_routes", reason=str(exc)))
            kept["client_cert_routes"] = old.client_cert_routes
    # Imported here: the supervisor imports this module and must not load asyncssh.
    from router.ssh.auth import AuthorizedKeys, load_ca_fingerprints

    authorized = router.auth.authorized
    if new.authorized_keys_path == authorized.path:
        try:
            authorized.reload(strict=False)  # re-read on change anyway: bad lines are skipped
        except ConfigError as exc:
            log.warning(fields("reload_kept", what="authorized_keys", reason=str(exc)))
    else:
        try:
            authorized = AuthorizedKeys(new.authorized_keys_path)
        except ConfigError as exc:
            log.warning(fields("reload_kept", what="authorized_keys", reason=str(exc)))
            kept["authorized_keys_file"] = old.authorized_keys_file
    cas = router.auth.ca_fingerprints
    if new.portal_ca_keys_file is None:
        cas = frozenset()
    else:  # read again even under the same name: its keys may have changed
        try:
            cas = load_ca_fingerprints(new.portal_ca_keys_file)
        except ConfigError as exc:
            log.warning(fields("reload_kept", what="portal_ca_keys", reason=str(exc)))
            kept["portal_ca_keys_file"] = old.portal_ca_keys_file
    router.auth.replace_keys(authorized, cas)
    return kept


def _apply_limits(router: Router, config: RouterConfig) -> None:
    """The limits new connections and logins meet from now on."""
    router.browsers.max_total = config.max_connections
    router.browsers.max_per_key = config.max_connections_per_ip
    router.ssh_limits.connections.max_per_key = config.max_ssh_connections_per_key
    router.ssh_limits.max_tunnels_per_owner = config.max_tunnels_per_key
    router.ssh_limits.auth_failures.retune(
        burst=config.ssh_auth_failures_burst, per_minute=config.ssh_auth_failures_per_minute
    )
    router.relay_limits = config.relay_limits
    router.hub.retune_pools(
        affinity=config.pool_affinity, backoff_s=config.pool_backoff_s,
        open_timeout_s=config.connect_timeout_s * POOL_OPEN_SHARE,
    )  # fmt: skip
    if router.hellos is not None:  # TLS passthrough's channel opens
        router.hellos.connect_timeout_s = config.connect_timeout_s
    if router.auth.portal is not None:
        router.auth.portal.retune(
            timeout_s=config.portal_timeout_s, ttl_s=config.portal_cache_ttl_s,
            negative_ttl_s=config.portal_negative_cache_ttl_s,
        )  # fmt: skip
    if router.gateway.holding is not None:
        router.gateway.holding.limit.per_minute = config.holding_lookups_per_minute
