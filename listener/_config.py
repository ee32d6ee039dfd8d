"""The listener's configuration: TOML file, ``HOSTMUX_*`` environment, flags.

The original DIT4C listener's environment variables work too, so the
listener is a drop-in in a DIT4C pod (``hostmux.dit4c`` lists them); a
``HOSTMUX_*`` variable or a flag wins over them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hostmux.config.layered import (
    ConfigError,
    build_parser,
    check_ranges,
    load,
    option,
    parse_host_port,
)
from hostmux.config.ranges import HOUR_S
from hostmux.dit4c import listener_environment
from hostmux.log import LOG_FORMATS, check_log_format
from hostmux.names import InvalidName, check_name

# Without a router or a portal to ask, try the router's embedded default.
DEFAULT_ROUTER = "127.0.0.1:2222"
# Reason: each connection is one more tunnel per name in the registry and one more
# SSH connection per pod; cloudflared's four per connector are already generous.
MAX_HA_CONNECTIONS = 8


@dataclass(frozen=True)
class ListenerConfig:
    router: list[str] = option(
        [],
        f"router SSH address(es) HOST:PORT (default: the portal's list, else {DEFAULT_ROUTER})",
        metavar="HOST:PORT",
    )
    name: str = option("", "the name to serve at NAME.DOMAIN (empty: a random name, kept)")
    target: str = option("127.0.0.1:3000", "the app to expose", metavar="HOST:PORT")
    tcp: str = option(
        "",
        "open a TCP tunnel on the router's public PORT instead of an HTTP name (0: any free "
        "port of the router's tcp_port_range, kept across reconnects); no URL check",
        metavar="PORT",
    )
    pool: bool = option(
        False,
        "serve the name together with other listeners of the same key (a pool: the "
        "router spreads requests over them); each listener process is one member",
    )
    tls_passthrough: bool = option(
        False,
        "a TLS passthrough tunnel: the router relays NAME.DOMAIN's TLS connections "
        "undecrypted to the target, which holds its own certificate (the router needs "
        "tls_passthrough); no URL check",
    )
    user: str = option("hostmux", "SSH user name (the instance id in portal mode)")
    identity_file: Path = option(Path("~/.ssh/id_ed25519").expanduser(), "private key")
    certificate_file: Path | None = option(
        None,
        "OpenSSH certificate for identity_file, e.g. the portal's (principal = the instance "
        "id): presented instead of the bare key; the router ends the tunnel when it expires",
        metavar="FILE",
    )
    certificate_url: str = option(
        "",
        "renew certificate_file before it expires: POST here (signed JWT, body: the public "
        "key) and swap to a connection with the new one (default: "
        "PORTAL_URL/instances/USER/certificate when portal_url is set; empty: never renewed)",
    )
    known_hosts: Path | None = option(
        None, "known_hosts file pinning the router's host key (default: ~/.ssh/known_hosts)",
        metavar="FILE",
    )  # fmt: skip
    host_key_fingerprint: list[str] = option(
        [], "pin the router's host key by fingerprint, instead of known_hosts",
        metavar="SHA256:...",
    )  # fmt: skip
    portal_url: str = option("", "portal base URL: routers and host keys from its config.json")
    uri_update_url: str = option("", "PUT the public URL here, signed with the instance key")
    jwt_iss: str = option("", "JWT issuer for URL updates (default: the user name)")
    jwt_kid: str = option("", "JWT key id for URL updates (default: the key's RFC 7638 thumbprint)")
    router_ca_file: Path | None = option(
        None,
        "CA to trust for the router's TLS (URL check, wss) (default: the system's, plus "
        "for the URL check the router's own dev CA, fetched over the pinned SSH connection)",
    )
    check_url: bool = option(
        True, "check that the public URL answers (advice only: never closes the tunnel)"
    )
    url_check_max_wait_s: float = option(
        60.0,
        "publish the URL after at most this long without a passing check",
        minimum=0,
        maximum=HOUR_S,
        zero="publish at once, without waiting for the check",
    )
    transport: str = option(
        "ssh", "ssh, wss (SSH over WebSocket through HTTPS) or auto (ssh, else wss)",
        metavar="{ssh,wss,auto}",
    )  # fmt: skip
    wss_url: str = option("", "the router's WebSocket endpoint, wss://DOMAIN[:PORT]/_hostmux/ssh")
    wss_header: list[str] = option([], "extra request header for WSS", metavar="NAME:VALUE")
    keepalive_interval_s: float = option(
        15.0, "SSH keepalive probe interval", minimum=0, maximum=HOUR_S
    )
    connect_timeout_s: float = option(
        15.0, "time allowed to connect and authenticate", minimum=0, maximum=HOUR_S
    )
    backoff_max_s: float = option(
        30.0, "longest wait between reconnect attempts", minimum=1, maximum=HOUR_S
    )
    ha_connections: int = option(
        0,
        "SSH connections to hold, each to a different router, each carrying the name",
        minimum=0,
        maximum=MAX_HA_CONNECTIONS,
        zero="2 when more than one router address is known (routers given or listed, or "
        "one name's DNS addresses), else 1",
    )
    metrics_listen: str = option(
        "",
        "serve /metrics (Prometheus), /healthz and /readyz here (HOST:PORT; loopback or a "
        "private address: nothing there is authenticated); empty: off",
        metavar="HOST:PORT",
    )
    log_level: str = option("info", "debug, info, warning or error", metavar="LEVEL")
    log_format: str = option(LOG_FORMATS[0], "logfmt or json (one object per line)")

    def __post_init__(self) -> None:
        check_ranges(self)
        for router in self.router:
            parse_host_port(router, "router")
        if self.metrics_listen:
            parse_host_port(self.metrics_listen, "metrics_listen")
        parse_host_port(self.target, "target")
        if self.name:
            try:
                check_name(self.name)
            except InvalidName as exc:
                raise ValueError(f"name: {exc}") from None
        if self.tcp:
            if not self.tcp.isdigit() or int(self.tcp) > 65535:
                raise ValueError(f"tcp: {self.tcp!r} is not a port (0-65535)")
            if self.name:
                raise ValueError("tcp and name do not go together (a TCP tunnel has a port)")
            if self.pool:
                raise ValueError("tcp and pool do not go together (pools serve names)")
            # Nothing answers HTTP on a TCP port: the URL check would only fail.
            object.__setattr__(self, "check_url", False)
        if self.tls_passthrough:
            if self.tcp:
                raise ValueError("tcp and tls_passthrough do not go together")
            # The target's certificate, not the router's: the check cannot trust it.
            object.__setattr__(self, "check_url", False)
        for fingerprint in self.host_key_fingerprint:
            if not fingerprint.startswith("SHA256:"):
                raise ValueError(f"host_key_fingerprint: {fingerprint!r} is not SHA256:...")
        for field in ("portal_url", "uri_update_url", "certificate_url"):
            value = getattr(self, field)
            if value and not value.startswith(("http://", "https://")):
                raise ValueError(f"{field}: {value!r} is not an http(s) URL")
        if self.transport not in ("ssh", "wss", "auto"):
            raise ValueError(f"transport: {self.transport!r} is not ssh, wss or auto")
        if self.transport != "ssh" and not self.wss_url.startswith(("wss://", "ws://")):
            raise ValueError("wss_url: a ws:// or wss:// URL is needed for that transport")
        for header in self.wss_header:
            if ":" not in header:
                raise ValueError(f"wss_header: {header!r} is not NAME:VALUE")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level: {self.log_level!r} is not debug, info, warning or error")
        check_log_format(self.log_format)

    @property
    def forward_name(self) -> str:
        """What to ask the router for first: the name, or "tcp:PORT" (see ``tcp``)."""
        return f"tcp:{int(self.tcp)}" if self.tcp else self.name

    @property
    def renewal_url(self) -> str:
        """Where the certificate is renewed ("" for never): ``certificate_url``, or the
        portal's ``/instances/USER/certificate`` (only with a certificate_file)."""
        if self.certificate_file is None:
            return ""
        if self.certificate_url:
            return self.certificate_url
        if self.portal_url:
            return f"{self.portal_url.rstrip('/')}/instances/{self.user}/certificate"
        return ""

    @property
    def target_address(self) -> tuple[str, int]:
        return parse_host_port(self.target, "target")

    @property
    def known_hosts_path(self) -> Path | None:
        if self.known_hosts is not None:
            return self.known_hosts
        pinned = self.host_key_fingerprint or self.portal_url
        return None if pinned else Path("~/.ssh/known_hosts").expanduser()


def parser() -> argparse.ArgumentParser:
    return build_parser(
        ListenerConfig,
        "hostmux-listener",
        "Expose a local app at https://NAME.DOMAIN through a hostmux router; reconnects for ever. "
        "Also: 'hostmux-listener connect WSS_URL' carries stdin/stdout over the router's "
        "SSH-over-WebSocket endpoint, as an OpenSSH ProxyCommand "
        "(see 'hostmux-listener connect --help').",
    )


def load_config(
    argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> ListenerConfig:
    env = os.environ if environ is None else environ
    return load(ListenerConfig, parser().parse_args(argv), listener_environment(env))


__all__ = ["DEFAULT_ROUTER", "ConfigError", "ListenerConfig", "load_config"]
