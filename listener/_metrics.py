"""The listener's figures for ``metrics_listen``: connected, reconnects, URL published.

Plain numbers, always kept (a few events per tunnel, not per request); turned
into Prometheus families (``ListenerOps``) only when ``metrics_listen`` is
set, so prometheus-client is imported only then. ``/readyz``: 503 while no
connection holds the name; "degraded" while fewer than wanted do (HA).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from hostmux.ops_server import Readiness


@dataclass
class ListenerCounts:
    """What the listener did so far (updated on its event loop only)."""

    wanted: int = 1  # connections meant to hold the name (HA: more than one)
    up: int = 0  # connections holding the name now
    connects_ok: int = 0
    connects_failed: int = 0
    drops: int = 0  # a connection that held the name went down (each one a reconnect)
    published: int = 0  # URL publications the portal accepted
    published_at: float | None = None  # the last one, Unix time

    def came_up(self) -> None:
        self.up += 1
        self.connects_ok += 1

    def went_down(self) -> None:
        self.up = max(self.up - 1, 0)
        self.drops += 1

    def url_published(self) -> None:
        self.published += 1
        self.published_at = time.time()


class ListenerOps:
    """``/metrics`` and ``/readyz`` of a listener (``hostmux.ops_server`` serves them)."""

    def __init__(self, counts: ListenerCounts) -> None:
        from hostmux.metric_values import process_registry

        self._counts = counts
        self._registry = process_registry("listener")
        self._registry.register(self)

    def __repr__(self) -> str:
        return f"<ListenerOps {self._counts!r}>"

    async def metrics(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self._registry)

    async def readiness(self) -> Readiness:
        from hostmux.ops_server import Readiness

        counts = self._counts
        if counts.up == 0:
            return Readiness(reason="no connection holds the name: connecting to a router")
        if counts.up < counts.wanted:
            return Readiness(degraded={"connections": f"{counts.up} of {counts.wanted} up"})
        return Readiness()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts = self._counts
        yield GaugeMetricFamily(
            "hostmux_listener_connected", "connections to routers holding the name now",
            value=counts.up,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "hostmux_listener_connections_wanted", "connections meant to hold the name",
            value=counts.wanted,
        )  # fmt: skip
        connects = CounterMetricFamily(
            "hostmux_listener_connects", "tunnel attempts, by result", labels=["result"]
        )
        connects.add_metric(["ok"], counts.connects_ok)
        connects.add_metric(["failed"], counts.connects_failed)
        yield connects
        yield CounterMetricFamily(
            "hostmux_listener_reconnects", "connections that held the name and went down",
            value=counts.drops,
        )  # fmt: skip
        yield CounterMetricFamily(
            "hostmux_listener_url_published", "public URL publications the portal accepted",
            value=counts.published,
        )  # fmt: skip
        if counts.published_at is not None:
            yield GaugeMetricFamily(
                "hostmux_listener_url_published_timestamp_seconds",
                "when the portal last accepted the public URL (Unix time)",
                value=counts.published_at,
            )
