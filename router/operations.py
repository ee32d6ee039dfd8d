"""The router's metrics and health, for ``/metrics``, ``/healthz`` and ``/readyz``.

Only when ``metrics_listen`` is set (``build_router`` makes a ``RouterOps``).
The rules:

1. The request path pays one call per request: the relay's ``on_request``
   record (already made for the access log) is counted here in plain numbers
   (``hostmux.metric_values``); everything else is read when Prometheus
   scrapes (tunnels, WebSockets, limits' refusals, the hub's event counts).
2. Labels take a few fixed values (``code_class``, ``direction``, ``result``,
   ``reason``, ``limit``); tunnel names only with ``metrics_per_tunnel``, in a
   family of their own (high cardinality, the operator's choice).
3. ``/readyz`` is 503 only when this router cannot serve: it is not (or no
   longer) listening, the certificate it serves (as loaded, not the file now
   on disk) has expired or does not cover ``*.domain``, it has no valid
   certificate from ACME (none yet, or expired), or it was cut off from the
   registry for ``name_reservation_s`` (its tunnels are then closed). A
   portal or registry that is down, or ACME renewals that fail, while it still
   serves is "degraded", with 200, so a load balancer does not drain every
   router at once; ``hostmux_ready`` and ``hostmux_degraded`` say the same.

Everything here runs on the event loop thread (``hostmux.ops_server`` asks it to).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostmux.metric_values import (
    DurationHistogram,
    code_class,
    histogram_family,
    process_registry,
)
from hostmux.ops_server import Readiness
from hostmux.relay import RequestRecord
from hostmux.relay.front_door import log_request

if TYPE_CHECKING:
    from router.activity import Activity
    from router.server import Listening, Router
    from router.tcp_ports import TcpPorts

# Reason: a probe of the portal per /readyz would make every load balancer's check a
# portal request; what a login or probe found this recently stands.
PORTAL_RECHECK_S = 10.0
# Reason: /readyz must answer within the ops server's LOOP_ANSWER_S (2 s).
PORTAL_PROBE_TIMEOUT_S = 1.5
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
DEGRADABLE = ("portal", "registry", "acme")


class RequestFigures:
    """Counts of the relay's request records (see rule 1): no lock, one thread."""

    __slots__ = ("bytes_in", "bytes_out", "duration", "per_tunnel", "requests")

    def __init__(self, *, per_tunnel: bool) -> None:
        self.requests = dict.fromkeys(CODE_CLASSES, 0)  # every series exists from the start
        self.duration = DurationHistogram()
        self.bytes_in = 0
        self.bytes_out = 0
        self.per_tunnel: dict[tuple[str, str], int] | None = {} if per_tunnel else None

    def __repr__(self) -> str:
        return f"<RequestFigures {sum(self.requests.values())} requests>"

    def observe(self, record: RequestRecord) -> None:
        kind = code_class(record.status)
        self.requests[kind] += 1
        self.duration.observe(record.duration_ms / 1000)
        self.bytes_in += record.bytes_in
        self.bytes_out += record.bytes_out
        if self.per_tunnel is not None and record.name:
            key = (record.name, kind)
            self.per_tunnel[key] = self.per_tunnel.get(key, 0) + 1


@dataclass
class RouterOps:
    """A router's figures and verdicts (``router`` as built; ``listening`` once bound)."""

    router: Router
    listening: Listening | None = None
    serving: bool = False  # between router_ready and router_stopping
    stopping: bool = False
    figures: RequestFigures = field(init=False)
    registry: CollectorRegistry = field(init=False)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.figures = RequestFigures(per_tunnel=self.router.config.metrics_per_tunnel)
        self.registry = process_registry("router")
        self.registry.register(_RouterCollector(self))

    def __repr__(self) -> str:
        return f"<RouterOps serving={self.serving} {self.figures!r}>"

    def on_request(self, record: RequestRecord) -> None:
        """The front door's per-request callback: the access log line, then the counts."""
        log_request(record)
        self.figures.observe(record)

    async def metrics(self) -> bytes:
        return generate_latest(self.registry)

    async def readiness(self) -> Readiness:
        portal = self.router.auth.portal
        if portal is not None and self.serving:
            checked = portal.checked_at
            if checked is None or self.clock() - checked > PORTAL_RECHECK_S:
                try:
                    async with asyncio.timeout(PORTAL_PROBE_TIMEOUT_S):
                        await portal.probe()
                except TimeoutError:
                    portal.problem = f"no answer within {PORTAL_PROBE_TIMEOUT_S:g} s"
                    portal.checked_at = self.clock()
        return self.verdict()

    def verdict(self) -> Readiness:
        """The verdict from what is known now (no probe): see rule 3."""
        router, degraded = self.router, {}
        tls = router.certificates
        reason = self._not_serving() or certificate_problem(
            tls.certificates.default_leaf if tls is not None else None,
            router.config.tls_cert_file,
            router.config.domain,
        )
        cluster = router.hub.cluster
        since = cluster.keeper.unavailable_since if cluster and cluster.keeper else None
        if since is not None:
            away_s, limit_s = self.clock() - since, router.config.name_reservation_s
            if away_s >= limit_s:
                reason = reason or (
                    f"cut off from the route registry for {away_s:.0f} s "
                    f"(name_reservation_s = {limit_s:g}): its tunnels are closed"
                )
            degraded["registry"] = f"unreachable for {away_s:.0f} s; serving the tunnels held"
        portal = router.auth.portal
        if portal is not None and portal.problem is not None:
            degraded["portal"] = f"{portal.problem}; tunnels up keep serving, new logins wait"
        if router.acme is not None:  # certificates from ACME (router.acme.manager.AcmeStatus)
            reason = reason or router.acme.status.problem() or ""
            failing = router.acme.status.degraded()
            if failing is not None:
                degraded["acme"] = f"{failing}; the certificate in use keeps serving"
        return Readiness(reason=reason, degraded=degraded)

    async def snapshot(self) -> bytes:
        """A worker's figures and verdict for its supervisor (``router.workers.ops``)."""
        readiness = await self.readiness()
        body = {
            "metrics": (await self.metrics()).decode(),
            "reason": readiness.reason,
            "degraded": readiness.degraded,
        }
        return json.dumps(body).encode()

    def _not_serving(self) -> str:
        if self.stopping:
            return "stopping: no new connections are accepted"
        if not self.serving or self.listening is None:
            return "starting: not listening on every configured address yet"
        for server in self.listening.http_servers:
            if not server.is_serving():
                return f"not listening on {_address_of(server)}"
        return ""


def certificate_problem(leaf: x509.Certificate | None, cert_file: Path | None, domain: str) -> str:
    """Why the operator's certificate the router serves now (``leaf``, loaded from
    ``cert_file`` at start or at the last reload that took it) cannot serve
    ``*.domain``; "" if it can, or if there is none (the development CA issues
    certificates as they are asked for). The file itself is not read: a reload that
    kept the old certificate, or a new file not yet reloaded, changes nothing served."""
    if leaf is None:
        return ""
    now, stamp = datetime.datetime.now(datetime.UTC), "%Y-%m-%dT%H:%M:%SZ"
    if leaf.not_valid_after_utc <= now:
        return f"the TLS certificate {cert_file} expired at {leaf.not_valid_after_utc:{stamp}}"
    if leaf.not_valid_before_utc > now:
        return f"the TLS certificate {cert_file} is valid from {leaf.not_valid_before_utc:{stamp}}"
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if not any(name == domain or name.endswith("." + domain) for name in dns):
        return f"the TLS certificate {cert_file} names no host under {domain}"
    return ""


def _address_of(server: asyncio.Server) -> str:
    sockets = server.sockets
    return ":".join(str(part) for part in sockets[0].getsockname()[:2]) if sockets else "?"


class _RouterCollector(Collector):
    """Reads the router's state when Prometheus scrapes (rule 1)."""

    def __init__(self, ops: RouterOps) -> None:
        self._ops = ops

    def collect(self) -> Iterator[Metric]:
        ops, router = self._ops, self._ops.router
        figures, counts = ops.figures, router.hub.counts
        requests = CounterMetricFamily(
            "hostmux_http_requests", "browser requests answered, by status class (none: the "
            "browser went before an answer)", labels=["code_class"],
        )  # fmt: skip
        for kind, value in figures.requests.items():
            requests.add_metric([kind], value)
        yield requests
        if figures.per_tunnel is not None:
            per_tunnel = CounterMetricFamily(
                "hostmux_tunnel_http_requests",
                "browser requests per tunnel name (metrics_per_tunnel: high cardinality)",
                labels=["name", "code_class"],
            )
            for (name, kind), value in sorted(figures.per_tunnel.items()):
                per_tunnel.add_metric([name, kind], value)
            yield per_tunnel
            if router.activity is not None:
                yield from _activity_families(router.activity)
        yield histogram_family(
            "hostmux_http_request_duration_seconds",
            "time from a request's head to its answer's end (a WebSocket: its whole life)",
            figures.duration,
        )
        transferred = CounterMetricFamily(
            "hostmux_bytes", "bytes relayed, from browsers (in) and to browsers (out)",
            labels=["direction"], unit="bytes",
        )  # fmt: skip
        transferred.add_metric(["in"], figures.bytes_in)
        transferred.add_metric(["out"], figures.bytes_out)
        yield transferred
        yield GaugeMetricFamily(
            "hostmux_tunnels",
            "tunnels this router serves",
            value=len(list(router.hub.routes.held())),
        )
        if router.hub.tcp is not None:
            yield from _tcp_families(router.hub.tcp)
        if router.config.tls_passthrough and router.hellos is not None:
            yield from _passthrough_families(router.hellos.stats)
        connects = CounterMetricFamily(
            "hostmux_tunnel_connects", "tunnel requests (ssh -R), by result", labels=["result"]
        )
        connects.add_metric(["ok"], counts["tunnel_up"])
        connects.add_metric(["refused"], counts["tunnel_refused"])
        yield connects
        yield CounterMetricFamily(
            "hostmux_certificate_expiries",
            "SSH connections closed when their portal certificate expired (the job ended)",
            value=counts["certificate_expired"],
        )
        failures = CounterMetricFamily(
            "hostmux_ssh_auth_failures", "SSH logins refused, by reason", labels=["reason"]
        )
        portal_down = router.auth.portal_down_refusals  # (among the refused keys)
        failures.add_metric(["key_refused"], counts["ssh_auth_refused_key"] - portal_down)
        failures.add_metric(["portal_unavailable"], portal_down)
        yield failures
        yield GaugeMetricFamily(
            "hostmux_browser_connections", "browser connections open",
            value=len(router.connections),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "hostmux_websockets_open", "WebSockets (and SSH over WebSocket) open",
            value=router.connections.websockets(),
        )  # fmt: skip
        rejections = CounterMetricFamily(
            "hostmux_limit_rejections", "connections and tunnels refused by a limit",
            labels=["limit"],
        )  # fmt: skip
        rejections.add_metric(["browser_connections"], router.browsers.refused)
        rejections.add_metric(["ssh_connections_per_key"], router.ssh_limits.connections.refused)
        rejections.add_metric(["tunnels_per_key"], router.ssh_limits.tunnels_refused)
        rejections.add_metric(["ssh_auth_failures"], counts["ssh_auth_rate_limited"])
        yield rejections
        if router.events is not None:
            events = CounterMetricFamily(
                "hostmux_portal_events", "events sent to events_url, by outcome "
                "(refused: a final non-2xx answer, dropped; overflow: the queue was full)",
                labels=["result"],
            )  # fmt: skip
            for result, value in router.events.counts.items():
                events.add_metric([result], value)
            yield events
            yield GaugeMetricFamily(
                "hostmux_portal_events_pending", "events waiting for the portal",
                value=router.events.pending(),
            )  # fmt: skip
        if router.gateway.holding is not None:
            holding = CounterMetricFamily(
                "hostmux_holding", "portal mode, names no tunnel serves: holding pages "
                "served, portal look-ups asked, look-ups refused by holding_lookups_per_minute",
                labels=["result"],
            )  # fmt: skip
            for result, value in router.gateway.holding.counts.items():
                holding.add_metric([result], value)
            yield holding
        portal = router.auth.portal
        if portal is not None:
            yield histogram_family(
                "hostmux_portal_lookup_duration_seconds",
                "time the portal took to answer an instance's keys (or to fail)",
                portal.lookup_seconds,
            )
        yield from readiness_families(ops.verdict())


def _activity_families(activity: Activity) -> Iterator[Metric]:
    """Per name (``metrics_per_tunnel``): activity, idle state, usage since start."""
    names = sorted(activity.names.items())
    last = GaugeMetricFamily(
        "hostmux_tunnel_last_activity_timestamp_seconds", "Unix time of a name's last "
        "activity (a request, or WebSocket traffic above idle_min_bytes_per_minute)",
        labels=["name"],
    )  # fmt: skip
    idle = GaugeMetricFamily(
        "hostmux_tunnel_idle", "1 while a name is idle (an idle event was sent for it)",
        labels=["name"],
    )  # fmt: skip
    requests = CounterMetricFamily(
        "hostmux_tunnel_usage_requests", "requests per name (WebSockets included) since start",
        labels=["name"],
    )  # fmt: skip
    transferred = CounterMetricFamily(
        "hostmux_tunnel_usage_bytes", "bytes per name, from browsers (in) and to them (out), "
        "WebSocket traffic included", labels=["name", "direction"], unit="bytes",
    )  # fmt: skip
    connection = CounterMetricFamily(
        "hostmux_tunnel_usage_connection_seconds", "time requests per name were in flight "
        "(WebSockets apart)", labels=["name"], unit="seconds",
    )  # fmt: skip
    websocket = CounterMetricFamily(
        "hostmux_tunnel_usage_websocket_seconds", "time WebSockets per name were open",
        labels=["name"], unit="seconds",
    )  # fmt: skip
    for name, entry in names:
        last.add_metric([name], entry.last_seen())
        idle.add_metric([name], 1 if entry.idle else 0)
        total = entry.total()
        requests.add_metric([name], total.requests)
        transferred.add_metric([name, "in"], total.bytes_in)
        transferred.add_metric([name, "out"], total.bytes_out)
        connection.add_metric([name], total.connection_s)
        websocket.add_metric([name], total.websocket_s)
    yield from (last, idle, requests, transferred, connection, websocket)


# Every outcome a TCP tunnel connection ends with (``router.tcp_ports``), always exported.
TCP_OUTCOMES = ("closed", "idle", "reset", "unavailable", "refused_source", "refused_limit")


# How a TLS passthrough connection ends (``router.tls_front``), always exported.
PASSTHROUGH_OUTCOMES = ("closed", "idle", "reset", "unavailable", "refused_limit")


def _passthrough_families(stats: Counter[str]) -> Iterator[Metric]:
    """TLS passthrough figures (only with ``tls_passthrough``)."""
    connections = CounterMetricFamily(
        "hostmux_passthrough_connections", "TLS passthrough connections ended, by outcome",
        labels=["outcome"],
    )  # fmt: skip
    for outcome in PASSTHROUGH_OUTCOMES:
        connections.add_metric([outcome], stats[outcome])
    yield connections
    transferred = CounterMetricFamily(
        "hostmux_passthrough_bytes",
        "bytes relayed through TLS passthrough tunnels, from clients (in) and to them",
        labels=["direction"],
    )
    transferred.add_metric(["in"], stats["bytes_in"])
    transferred.add_metric(["out"], stats["bytes_out"])
    yield transferred
    dropped = CounterMetricFamily(
        "hostmux_tls_hellos_dropped",
        "TLS connections closed before their ClientHello was complete, by reason",
        labels=["reason"],
    )
    dropped.add_metric(["timeout"], stats["hello_timeout"])
    dropped.add_metric(["incomplete"], stats["hello_incomplete"])
    yield dropped


def _tcp_families(tcp: TcpPorts) -> Iterator[Metric]:
    """TCP tunnels' figures (only where ``tcp_port_range`` is set)."""
    yield GaugeMetricFamily(
        "hostmux_tcp_tunnels", "TCP ports this router's tunnels hold", value=len(tcp.held())
    )
    connections = CounterMetricFamily(
        "hostmux_tcp_connections", "TCP tunnel connections ended, by outcome", labels=["outcome"]
    )
    for outcome in TCP_OUTCOMES:
        connections.add_metric([outcome], tcp.stats[outcome])
    yield connections
    transferred = CounterMetricFamily(
        "hostmux_tcp_bytes", "bytes relayed through TCP tunnels, from clients (in) and to them",
        labels=["direction"], unit="bytes",
    )  # fmt: skip
    transferred.add_metric(["in"], tcp.stats["bytes_in"])
    transferred.add_metric(["out"], tcp.stats["bytes_out"])
    yield transferred


def readiness_families(readiness: Readiness) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "hostmux_ready", "1 when /readyz answers 200 (ready or degraded)",
        value=1 if readiness.ready else 0,
    )  # fmt: skip
    degraded = GaugeMetricFamily(
        "hostmux_degraded", "1 while a dependency is down and the router serves without it",
        labels=["component"],
    )  # fmt: skip
    for component in DEGRADABLE:
        degraded.add_metric([component], 1 if component in readiness.degraded else 0)
    yield degraded


def readiness_of(snapshot: dict[str, Any]) -> Readiness:
    """A worker's verdict as its snapshot carries it."""
    return Readiness(
        reason=str(snapshot.get("reason", "")), degraded=dict(snapshot.get("degraded", {}))
    )
