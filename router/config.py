"""The router's configuration: one frozen object, built from TOML, env and flags.

With no configuration at all the router serves ``*.localhost`` on loopback:
SSH on 2222, HTTPS on 8443 (certificate from a development CA it creates),
plain HTTP on 8080, state in ``$XDG_STATE_HOME/hostmux`` — for trying it out.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostmux.config.layered import (
    ConfigError,
    build_parser,
    check_ranges,
    load,
    option,
    parse_host_port,
    parse_listen_list,
)
from hostmux.config.ranges import DAY_S, GIB, HOUR_S, KIB, MIB, MINUTE_S, PORT_MAX, WEEK_S
from hostmux.log import LOG_FORMATS, check_log_format
from hostmux.names import is_dns_label
from hostmux.relay import RelayLimits
from keys import KeysError, check_router_id
from router.client_certs import parse_client_cert_routes
from router.pool import AFFINITIES
from router.registry.model import MAX_ID_CHARS
from router.tcp_ports import parse_port_range, parse_port_rules

# Beyond 256 router processes on one machine a second machine is the answer, and each
# worker holds a registry connection and a lease round of its own.
MAX_WORKERS = 256
ACME_CHALLENGES = ("dns-01", "http-01", "tls-alpn-01")
# What a supervisor may hand a worker (``listen_fds``): a socket per kind of listener.
LISTEN_KINDS = ("ssh", "https", "http", "one_port")


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "hostmux")


@dataclass(frozen=True)
class RouterConfig:
    domain: str = option("localhost", "the domain tunnels live under: NAME.DOMAIN")
    ssh_listen: list[str] = option(["127.0.0.1:2222"], "SSH address for tunnel clients")
    https_listen: list[str] = option(["127.0.0.1:8443"], "HTTPS front door address")
    http_listen: list[str] = option(["127.0.0.1:8080"], "plain HTTP front door address")
    one_port_listen: list[str] = option(
        [], "addresses serving SSH, HTTPS and HTTP on one port, told apart by the first bytes"
    )
    public_port: int = option(
        0, "HTTPS port shown in public URLs", minimum=0, maximum=PORT_MAX,
        zero="the port the front door listens on",
    )  # fmt: skip
    state_dir: Path = option(Path(_default_state_dir()), "where host key and dev CA live")
    host_key_file: Path | None = option(None, "SSH host key (default: STATE_DIR/ssh_host_key)")
    authorized_keys_file: Path | None = option(
        None,
        'who may open tunnels, OpenSSH authorized_keys format; permitlisten="NAME" options '
        "restrict a key to those names (default: STATE_DIR/authorized_keys)",
    )
    tls_cert_file: Path | None = option(None, "TLS certificate chain (default: dev CA leaf)")
    tls_key_file: Path | None = option(None, "TLS private key (default: dev CA leaf key)")
    # 0 is refused: with no reservation another key could take a name over while its
    # owner reconnects, and a negative value must not switch that protection off either.
    name_reservation_s: float = option(
        600.0, "after a tunnel goes, its name stays reserved for its key this long",
        minimum=0, maximum=WEEK_S,
    )  # fmt: skip
    channel_window_bytes: int = option(
        2 * MIB, "SSH channel window per request (2 MiB or more; 4-8 MiB for WAN)",
        minimum=64 * KIB, maximum=GIB,
    )  # fmt: skip
    ssh_keepalive_interval_s: float = option(
        30.0, "SSH keepalive probe interval", minimum=0, maximum=HOUR_S
    )
    max_pending_channel_opens: int = option(
        1024, "channel opens one SSH connection may leave unanswered at once (more: 502)",
        minimum=1,
    )  # fmt: skip
    ssh_login_timeout_s: float = option(
        30.0, "time a client has to authenticate", minimum=0, maximum=HOUR_S
    )
    header_timeout_s: float = option(
        60.0, "time a browser has to send request headers", minimum=0, maximum=HOUR_S
    )
    keepalive_timeout_s: float = option(
        75.0, "idle time before a keep-alive connection closes", minimum=0, maximum=DAY_S
    )
    body_timeout_s: float = option(
        60.0, "time between two reads of a request body (else 408)", minimum=0, maximum=DAY_S
    )
    send_timeout_s: float = option(
        60.0, "time a browser has to accept more response data", minimum=0, maximum=DAY_S
    )
    connect_timeout_s: float = option(
        10.0, "time to open a channel down a tunnel (else 504)", minimum=0, maximum=HOUR_S
    )
    pool_affinity: str = option(
        "none",
        "how requests of a pool (several tunnels for one name: listener --pool) pick a "
        "member: none (each browser connection: the member with the fewest requests "
        "outstanding from this router) or cookie (a browser keeps its member through a "
        "router cookie, hostmux_pool, on the exact host)",
        metavar="{none,cookie}",
    )
    pool_backoff_s: float = option(
        10.0, "a pool member whose channel opens fail is skipped this long",
        minimum=0, maximum=HOUR_S,
    )  # fmt: skip
    response_timeout_s: float = option(
        60.0,
        "time for the app to start answering once the request is sent, and to take more "
        "of a request body (else 504)",
        minimum=0,
        maximum=DAY_S,
    )
    upstream_idle_timeout_s: float = option(
        300.0, "time between two chunks of a response body", minimum=0, maximum=DAY_S
    )
    websocket_idle_timeout_s: float = option(
        3600.0, "idle time before a WebSocket is closed", minimum=0, maximum=WEEK_S
    )
    tls_handshake_timeout_s: float = option(
        10.0, "time a browser has to finish TLS", minimum=0, maximum=HOUR_S
    )
    max_header_bytes: int = option(
        32 * KIB, "largest request head accepted (else 431)", minimum=KIB, maximum=MIB
    )
    max_requests_per_connection: int = option(
        1000, "requests one keep-alive connection may carry; the last gets Connection: close",
        minimum=1,
    )  # fmt: skip
    portal_keys_url: str = option(
        "",
        "portal mode: URL template of an instance's public keys, e.g. "
        "https://portal.example/instances/{id}/keys (JWKS or authorized_keys lines)",
    )
    portal_ca_keys_file: Path | None = option(
        None, "portal mode: trusted SSH CA public keys; certificates with principal = instance id"
    )
    portal_timeout_s: float = option(
        5.0, "time the portal has to answer a key look-up", minimum=0, maximum=5 * MINUTE_S
    )
    portal_cache_ttl_s: float = option(
        60.0, "how long an instance's keys are cached", minimum=0, maximum=DAY_S,
        zero="no caching: every login asks the portal",
    )  # fmt: skip
    portal_negative_cache_ttl_s: float = option(
        10.0, "how long 'no such instance' is cached", minimum=0, maximum=DAY_S,
        zero="not cached: each login for an unknown instance asks the portal",
    )  # fmt: skip
    holding_lookups_per_minute: int = option(
        20, "portal mode: portal look-ups one client IP may trigger per minute for names no "
        "tunnel serves (the holding page); over it, 404/502 without asking", minimum=0,
        maximum=100_000, zero="no look-ups for browsers: cached answers only",
    )  # fmt: skip
    events_url: str = option("", "POST events here (signed JSON, version-1 schema)")
    events_secret: str = option("", "HMAC-SHA256 secret for X-Hostmux-Signature on events")
    router_name: str = option("", "this router's name in events (default: its SSH address)")
    idle_after_s: float = option(
        0.0, "send a signed idle event for a name whose tunnel is up and that saw no activity "
        "(a request, or WebSocket traffic) for this long, and active when activity returns",
        minimum=0, maximum=WEEK_S, zero="off: no idle or active events",
    )  # fmt: skip
    idle_min_bytes_per_minute: int = option(
        0, "WebSocket (upgraded) traffic counts as activity only once a name's bytes in the "
        "last minute reach this (a kernel's pings below it do not keep an instance active)",
        minimum=0, maximum=GIB, zero="any WebSocket byte is activity",
    )  # fmt: skip
    usage_interval_s: float = option(
        3600.0, "send a signed usage event per name per interval (requests, bytes, "
        "connection- and WebSocket-seconds), intervals aligned to the epoch",
        minimum=1, maximum=DAY_S,
    )  # fmt: skip
    registry: str = option(
        "",
        "route registry shared by a cluster of routers: redis://[USER:PASSWORD@]HOST:PORT/DB "
        "or rediss:// (TLS: Redis's certificate checked against the system's CAs; a private "
        "CA: add ?ssl_ca_certs=FILE); empty: names live in this process only",
        metavar="URL",
    )
    registry_prefix: str = option(
        "hostmux:", "prefix of the registry's keys and channel (clusters sharing one Redis)"
    )
    router_id: str = option(
        "", "this router's id in the registry (default: router_name, else its first SSH address)"
    )
    cluster_listen: str = option(
        "",
        "address of the router-to-router link (HOST:PORT, port 0 allowed): other routers "
        "forward requests for the names this router holds here; empty: no link, names held "
        "elsewhere answer 404",
        metavar="HOST:PORT",
    )
    cluster_advertise: str = option(
        "", "HOST:PORT other routers dial for the link (default: cluster_listen as bound)",
        metavar="HOST:PORT",
    )  # fmt: skip
    cluster_ca_file: Path | None = option(
        None, "the cluster CA certificate (hostmux-keys cluster-ca init DIR writes DIR/ca.crt)"
    )
    cluster_cert_file: Path | None = option(
        None, "this router's cluster certificate (hostmux-keys cluster-ca issue DIR ROUTER_ID)"
    )
    cluster_key_file: Path | None = option(None, "the key of cluster_cert_file")
    # Below 3 s a renewal every lease_ttl_s/3 would beat the registry's 2 s answer time.
    lease_ttl_s: float = option(
        15.0, "a dead router's names move after this long (leases renewed every third)",
        minimum=3, maximum=HOUR_S,
    )  # fmt: skip
    workers: int = option(
        1, "router processes on this machine, one supervisor starting them (needs registry)",
        minimum=0, maximum=MAX_WORKERS, zero="one per usable CPU",
    )  # fmt: skip
    worker_index: int = option(
        0, "set by the workers supervisor for its worker N (its logs say worker=N)",
        minimum=0, maximum=MAX_WORKERS, zero="not a supervisor's worker",
    )  # fmt: skip
    listen_fds: list[str] = option(
        [],
        "set by the workers supervisor: listening sockets inherited as KIND=FD (KIND: ssh, "
        "https, http, one_port), served instead of binding the *_listen addresses",
        metavar="KIND=FD",
    )
    max_connections: int = option(10_000, "browser connections the router holds at most", minimum=1)
    max_connections_per_ip: int = option(256, "browser connections one IP may hold", minimum=1)
    max_ssh_connections_per_key: int = option(
        64, "SSH connections one key (or instance) may hold", minimum=1
    )
    max_tunnels_per_key: int = option(256, "tunnels one key (or instance) may hold", minimum=1)
    ssh_auth_failures_burst: int = option(10, "failed SSH logins an IP may have at once", minimum=1)
    # 0 would never refill: one burst of typos would lock an address out for good.
    ssh_auth_failures_per_minute: float = option(
        6.0, "...and how fast that allowance refills", minimum=0
    )
    trusted_proxies: list[str] = option(
        [],
        "proxies in front (addresses or CIDR networks, e.g. 127.0.0.1) whose X-Forwarded-For "
        "and X-Forwarded-Proto name the real browser",
        metavar="ADDRESS",
    )
    keep_cookie_domain: bool = option(
        False,
        "keep the Domain attribute of the apps' Set-Cookie headers (default: removed, so an "
        "app's cookies stay on its own host and cannot reach sibling instances)",
    )
    shutdown_grace_s: float = option(
        10.0, "on SIGTERM, time requests in flight get to finish (systemd waits 90 s)",
        minimum=0, maximum=HOUR_S,
    )  # fmt: skip
    metrics_listen: str = option(
        "",
        "serve /metrics (Prometheus), /healthz and /readyz here (HOST:PORT, port 0 allowed; "
        "a loopback or private address: nothing there is authenticated); empty: off",
        metavar="HOST:PORT",
    )
    metrics_per_tunnel: bool = option(
        False,
        "add per-tunnel series (a name label on request counts): HIGH CARDINALITY, one "
        "series per tunnel name ever served; off: every label has a few fixed values",
    )
    admin_listen: str = option(
        "",
        "the admin API and status page: a loopback HOST:PORT or an absolute unix socket path; "
        "every call needs the admin token; empty: off",
        metavar="ADDRESS",
    )
    admin_token_file: Path | None = option(
        None,
        "file holding the admin API's bearer token (default: STATE_DIR/admin_token, created "
        "with mode 0600 when missing)",
    )
    # TCP tunnels (issue 20): ssh -R tcp:PORT:HOST:PORT, or tcp:0 for any port of the range.
    tcp_port_range: str = option(
        "",
        "public ports TCP tunnels may take (ssh -R tcp:PORT:... or tcp:0:... for any), "
        "e.g. 20000-20999; empty: TCP tunnels off",
        metavar="FIRST-LAST",
    )
    tcp_listen_host: str = option(
        "", "address TCP tunnels' ports listen on (default: the first front door's host)"
    )
    max_tcp_ports_per_key: int = option(
        4, "TCP ports one key (or instance) may hold", minimum=1, maximum=PORT_MAX
    )
    tcp_idle_timeout_s: float = option(
        3600.0, "idle time (neither side sent) before a TCP tunnel's connection is closed",
        minimum=0, maximum=WEEK_S,
    )  # fmt: skip
    tcp_port_rules: list[dict[str, Any]] = option(
        [],
        'per-port source limits of TCP tunnels: tables with ports ("20000-20010" or a '
        "list of ports) and allow_cidrs (a list of networks); a connection to such a port "
        "from another address is refused at accept; ports under no rule take any source",
        toml_only=True,
    )
    tcp_proxy_protocol: bool = option(
        False,
        "send a PROXY protocol v2 header first on every TCP tunnel connection, so the "
        "backend sees the client's address (the backend must expect it)",
    )
    tls_passthrough: bool = option(
        False,
        "allow TLS passthrough tunnels (ssh -R NAME:443:HOST:PORT): the HTTPS and one-port "
        "listeners read each ClientHello's server name first and relay a passthrough name's "
        "connections undecrypted to its tunnel (the backend holds the certificate); in a "
        "cluster with the router link, also to a tunnel held on another router",
    )
    client_cert_routes: list[dict[str, Any]] = option(
        [],
        'client certificates (mutual TLS) per name: tables with names (a glob, "lab-*", or '
        "a list), ca_file (PEM CAs), optional crl_file (PEM) and required_at_handshake "
        "(false: no certificate gets a 403 page; true: a TLS alert); names under no route "
        "are never asked for a certificate; CA and CRL files are re-read on SIGHUP",
        toml_only=True,
    )
    log_level: str = option("info", "debug, info, warning or error", metavar="LEVEL")
    # Operations (issue 19): certificates by SNI, reloaded on SIGHUP; the log format.
    tls_cert_dir: Path | None = option(
        None,
        "per-host certificates chosen by SNI beside the default one: NAME.crt with NAME.key, "
        "or NAME.pem holding both; each serves the DNS names of its subjectAltName (an exact "
        "name beats a wildcard); re-read on SIGHUP",
    )
    log_format: str = option(LOG_FORMATS[0], "logfmt or json (one object per line)")
    # Certificates from an ACME CA (issue 19, point 4; docs/operations.md).
    acme_directory_url: str = option(
        "",
        "ACME directory URL (e.g. https://acme-v02.api.letsencrypt.org/directory): the router "
        "orders and renews its certificates there (needs the acme extra); empty: off",
        metavar="URL",
    )
    acme_email: str = option("", "contact address given to the ACME CA (expiry notices)")
    acme_challenge: str = option(
        ACME_CHALLENGES[0],
        "dns-01 (a certificate for DOMAIN and *.DOMAIN, tunnels included), http-01 (DOMAIN "
        "only, answered on http_listen) or tls-alpn-01 (DOMAIN only, answered on https_listen)",
        metavar="TYPE",
    )
    acme_ca_file: Path | None = option(
        None, "CA certificates to trust for the ACME server (a test CA such as Pebble's)"
    )
    acme_dns_server: str = option(
        "", "dns-01: the primary DNS server taking RFC 2136 updates, HOST[:PORT] (port 53)",
        metavar="HOST:PORT",
    )  # fmt: skip
    acme_dns_zone: str = option("", "dns-01: the zone the updates go to (default: domain)")
    acme_dns_tsig_key_file: Path | None = option(
        None, "dns-01: TSIG key signing the updates, in BIND's format (tsig-keygen's output)"
    )
    acme_dns_hook: str = option(
        "",
        "dns-01 without RFC 2136: a command run as COMMAND add|remove FQDN VALUE "
        "(exit 0: done) that sets or removes the TXT record",
        metavar="COMMAND",
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.pool_affinity not in AFFINITIES:
            raise ValueError(
                f"pool_affinity: {self.pool_affinity!r} is not {' or '.join(AFFINITIES)}"
            )
        if not all(is_dns_label(part) for part in self.domain.split(".")):
            raise ValueError(f"domain: {self.domain!r} is not a valid lower-case domain name")
        for field in ("ssh_listen", "https_listen", "http_listen", "one_port_listen"):
            parse_listen_list(getattr(self, field), field)
        if self.metrics_listen:
            parse_listen_list([self.metrics_listen], "metrics_listen")
        if not self.ssh_listen:
            raise ValueError("ssh_listen: at least one address is needed")
        if not (self.https_listen or self.http_listen or self.one_port_listen):
            raise ValueError(
                "https_listen, http_listen, one_port_listen: at least one front door is needed"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.one_port_listen and not self.https_listen and self.tls_cert_file is None:
            raise ValueError(
                "one_port_listen needs TLS: an https_listen address (development CA) "
                "or tls_cert_file and tls_key_file"
            )
        url = self.portal_keys_url
        if url and ("{id}" not in url or not url.startswith(("http://", "https://"))):
            raise ValueError("portal_keys_url: an http(s) URL template containing {id}")
        if self.events_url and not self.events_secret:
            raise ValueError("events_url needs events_secret (events are signed)")
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {network!r} is not an IP address or network"
                ) from None
        if self.registry and not self.registry.startswith(("redis://", "rediss://")):
            raise ValueError("registry: a redis:// or rediss:// URL (or empty)")
        for field in ("registry_prefix", "router_id"):
            value = getattr(self, field)
            if value and (len(value) > MAX_ID_CHARS or not value.isprintable() or " " in value):
                raise ValueError(f"{field}: 1-{MAX_ID_CHARS} printable characters without spaces")
        if self.workers != 1 and not self.registry:
            raise ValueError(
                f"workers: {self.workers} workers need a registry (registry = redis://...); "
                "without one a router is one process"
            )
        self.inherited_sockets()  # checks listen_fds
        if self.admin_listen:
            check_admin_listen(self.admin_listen)
        self._check_cluster()
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level: {self.log_level!r} is not debug, info, warning or error")
        check_log_format(self.log_format)
        try:
            parse_port_range(self.tcp_port_range)
        except ValueError as error:
            raise ValueError(f"tcp_port_range: {error}") from None
        parse_port_rules(self.tcp_port_rules)
        parse_client_cert_routes(self.client_cert_routes)
        if (self.tls_passthrough or self.client_cert_routes) and not (
            self.https_listen or self.one_port_listen
        ):
            raise ValueError(
                "tls_passthrough and client_cert_routes need an https_listen or one_port_listen"
            )
        if self.tcp_listen_host:
            try:
                ipaddress.ip_address(self.tcp_listen_host)
            except ValueError:
                raise ValueError(
                    f"tcp_listen_host: {self.tcp_listen_host!r} is not an IP address"
                ) from None

        self._check_acme()

    @property
    def tcp_listen_address(self) -> str:
        """Where TCP tunnels' ports listen: tcp_listen_host, else the first front door's host."""
        if self.tcp_listen_host:
            return self.tcp_listen_host
        for field in ("https_listen", "http_listen", "one_port_listen"):
            for address in getattr(self, field):
                return parse_host_port(address, field)[0]
        return "0.0.0.0"

    def inherited_sockets(self) -> dict[str, list[int]]:
        """``listen_fds`` by kind (every kind present, in LISTEN_KINDS order); a
        ValueError says what does not fit the *_listen addresses."""
        found: dict[str, list[int]] = {kind: [] for kind in LISTEN_KINDS}
        for entry in self.listen_fds:
            kind, _, fd = entry.partition("=")
            if kind not in found or not fd.isdigit() or int(fd) < 3:
                raise ValueError(
                    f"listen_fds: {entry!r} is not KIND=FD (KIND: {', '.join(LISTEN_KINDS)};"
                    " FD: 3 or more)"
                )
            found[kind].append(int(fd))
        if self.listen_fds:
            for kind, fds in found.items():
                if bool(fds) != bool(getattr(self, f"{kind}_listen")):
                    raise ValueError(
                        f"listen_fds: {kind} sockets are given exactly when {kind}_listen is"
                    )
        return found

    def _check_acme(self) -> None:
        given = [
            name for name in (
                "acme_email", "acme_ca_file", "acme_dns_server", "acme_dns_zone",
                "acme_dns_tsig_key_file", "acme_dns_hook",
            ) if getattr(self, name)
        ]  # fmt: skip
        if not self.acme_directory_url:
            if given:
                raise ValueError(f"{given[0]} needs acme_directory_url")
            return
        if not self.acme_directory_url.startswith(("https://", "http://")):
            raise ValueError("acme_directory_url: an http(s) URL")
        if self.acme_challenge not in ACME_CHALLENGES:
            raise ValueError(
                f"acme_challenge: {self.acme_challenge!r} is not {', '.join(ACME_CHALLENGES)}"
            )
        if not (self.https_listen or self.one_port_listen):
            raise ValueError("acme_directory_url: the certificates need an HTTPS front door")
        if self.tls_cert_file is not None:
            raise ValueError(
                "acme_directory_url and tls_cert_file: choose one for the default certificate"
            )
        if self.acme_challenge == "tls-alpn-01":
            if not self.https_listen:
                raise ValueError(
                    "acme_challenge tls-alpn-01 needs https_listen (the CA asks on port 443)"
                )
            if self.workers != 1 and not self.registry:  # RouterConfig refuses it anyway
                raise ValueError("acme_challenge tls-alpn-01 with workers needs a registry")
            dns = [n for n in given if n.startswith("acme_dns_")]
            if dns:
                raise ValueError(f"{dns[0]} is for acme_challenge dns-01")
            return
        if self.acme_challenge == "http-01":
            if self.workers != 1 and not self.registry:  # RouterConfig refuses it anyway
                raise ValueError("acme_challenge http-01 with workers needs a registry")
            if not (self.http_listen or self.one_port_listen):
                raise ValueError(
                    "acme_challenge http-01 needs http_listen (the CA asks on port 80)"
                )
            dns = [n for n in given if n.startswith("acme_dns_")]
            if dns:
                raise ValueError(f"{dns[0]} is for acme_challenge dns-01")
            return
        if bool(self.acme_dns_server) == bool(self.acme_dns_hook):
            raise ValueError("acme_challenge dns-01 needs acme_dns_server or acme_dns_hook (one)")
        if self.acme_dns_hook and (self.acme_dns_zone or self.acme_dns_tsig_key_file):
            raise ValueError("acme_dns_zone and acme_dns_tsig_key_file go with acme_dns_server")
        if self.acme_dns_server:
            self.acme_dns_address  # noqa: B018  (checks it)
        zone = self.acme_dns_zone.rstrip(".")
        if zone and (zone != self.domain and not self.domain.endswith("." + zone)):
            raise ValueError(f"acme_dns_zone: {zone} does not hold {self.domain}")

    def _check_cluster(self) -> None:
        link = {
            "cluster_listen": bool(self.cluster_listen),
            "cluster_ca_file": self.cluster_ca_file is not None,
            "cluster_cert_file": self.cluster_cert_file is not None,
            "cluster_key_file": self.cluster_key_file is not None,
        }
        if not any(link.values()):
            if self.cluster_advertise:
                raise ValueError("cluster_advertise needs cluster_listen")
            return
        if not all(link.values()):
            missing = ", ".join(name for name, given in link.items() if not given)
            raise ValueError(
                "cluster_listen, cluster_ca_file, cluster_cert_file and cluster_key_file go "
                f"together: {missing} missing"
            )
        if not self.registry:
            raise ValueError("cluster_listen needs registry (routers find each other there)")
        for field in ("cluster_listen", "cluster_advertise"):
            if getattr(self, field):
                parse_listen_list([getattr(self, field)], field)
        if self.cluster_advertise and parse_host_port(self.cluster_advertise, "")[1] == 0:
            raise ValueError("cluster_advertise: give the port peers dial, not 0")
        if not self.router_id:
            raise ValueError("cluster_listen needs router_id (the id in its cluster certificate)")
        try:
            check_router_id(self.router_id)
        except KeysError as error:
            raise ValueError(f"router_id: {error}") from None

    @property
    def admin_token_path(self) -> Path:
        return self.admin_token_file or self.state_dir / "admin_token"

    @property
    def acme_dns_address(self) -> tuple[str, int]:
        """``acme_dns_server`` as (IP, port): ``IP``, ``IP:PORT`` or ``[IPv6]:PORT``."""
        value = self.acme_dns_server
        host, port = value, "53"
        if value.startswith("[") or value.count(":") == 1:
            host, _, port = value.rpartition(":")
        try:
            ip = ipaddress.ip_address(host.strip("[]") if value.startswith("[") else host)
        except ValueError:
            raise ValueError(f"acme_dns_server: {value!r} is not IP[:PORT]") from None
        if not port.isdigit() or not 0 < int(port) <= PORT_MAX:
            raise ValueError(f"acme_dns_server: {value!r} is not IP[:PORT]")
        return str(ip), int(port)

    @property
    def host_key_path(self) -> Path:
        return self.host_key_file or self.state_dir / "ssh_host_key"

    @property
    def authorized_keys_path(self) -> Path:
        return self.authorized_keys_file or self.state_dir / "authorized_keys"

    @property
    def relay_limits(self) -> RelayLimits:
        return RelayLimits(
            max_header_bytes=self.max_header_bytes,
            header_timeout_s=self.header_timeout_s,
            keepalive_timeout_s=self.keepalive_timeout_s,
            body_timeout_s=self.body_timeout_s,
            send_timeout_s=self.send_timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            response_timeout_s=self.response_timeout_s,
            upstream_idle_timeout_s=self.upstream_idle_timeout_s,
            websocket_idle_timeout_s=self.websocket_idle_timeout_s,
            max_requests_per_connection=self.max_requests_per_connection,
        )


def check_admin_listen(value: str) -> tuple[str, int] | Path:
    """``admin_listen`` as a loopback (host, port) or a unix socket path; ValueError if
    neither: the admin API is for this machine's operator, never for the network."""
    if value.startswith("/"):
        return Path(value)
    try:
        host, port = parse_host_port(value, "admin_listen")
    except ConfigError as exc:
        raise ValueError(f"{exc} (or an absolute unix socket path)") from None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"admin_listen: {value!r} is not a loopback address (127.0.0.1, ::1) "
            "or a unix socket path: the admin API is not for the network"
        )
    return host, port


def parser(prog: str = "hostmux-router") -> argparse.ArgumentParser:
    return build_parser(
        RouterConfig,
        prog,
        "Route https://NAME.DOMAIN to apps behind SSH tunnels (ssh -R NAME:80:localhost:PORT). "
        "'hostmux-router check-config [options]' checks the configuration and prints it; "
        "'hostmux-router tunnels|kick NAME|block KIND VALUE|unblock KIND VALUE|blocks|drain' "
        "call a running router's admin API (admin_listen) with the same options.",
    )


def load_config(
    argv: Sequence[str] | None,
    environ: Mapping[str, str] | None = None,
    *,
    prog: str = "hostmux-router",
) -> RouterConfig:
    """Parse flags and layers; raises ConfigError (and SystemExit for --help)."""
    args = parser(prog).parse_args(argv)
    return load(RouterConfig, args, environ)


__all__ = ["ConfigError", "RouterConfig", "load_config"]
