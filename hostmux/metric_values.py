"""Figures a component keeps for Prometheus, cheap enough for every request.

prometheus-client's own Counter and Histogram take a lock on every update;
on the request path we keep plain numbers instead, updated on the event loop
thread only, and hand them to prometheus-client as metric families when
``/metrics`` is scraped (on the same thread: ``hostmux.ops_server``).
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Sequence
from importlib import metadata

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Info,
)
from prometheus_client.core import HistogramMetricFamily

# Request and look-up durations, in seconds: 1 ms to a minute (a WebSocket's
# whole life lands in +Inf).
DURATION_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class DurationHistogram:
    """Observations counted per bucket (``le``: at most the bound), and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def __repr__(self) -> str:
        return f"<DurationHistogram count={sum(self.counts)} sum={self.sum:g}>"

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str] = ()) -> None:
        """Add these figures to ``family`` as one labelled histogram (cumulative buckets)."""
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        family.add_metric(list(labels), buckets, self.sum)


def histogram_family(
    name: str, documentation: str, histogram: DurationHistogram
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    histogram.add_to(family)
    return family


def code_class(status: int) -> str:
    """``2xx`` for 204; ``none`` for 0 (no answer was sent: the browser went first)."""
    return _CODE_CLASSES[status // 100] if 0 < status < 600 else "none"


_CODE_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def process_registry(component: str) -> CollectorRegistry:
    """A registry with the process's own figures and ``hostmux_build_info``."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    build = Info("hostmux_build", "the hostmux that runs here", registry=registry)
    build.info({"version": _version(), "component": component, "python": platform.python_version()})
    return registry


def _version() -> str:
    try:
        return metadata.version("hostmux")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"
