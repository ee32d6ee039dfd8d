"""The auth helper's figures for ``metrics_listen``: logins, denials, the visitor audit.

The gateway counts its events (``AuthGateway.counts``: a few per login, not
per request); ``HelperOps`` turns them into Prometheus families only when
``metrics_listen`` is set (prometheus-client is imported only then).
``/readyz`` is ready once the helper listens (it has no dependency it cannot
serve without: a portal that is down only delays logins and re-checks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from hostmux.ops_server import Readiness

    from ._audit import VisitorAudit

# The gateway's events, by the counter and label they feed.
LOGIN_RESULTS = {"login": "ok", "login_denied": "denied", "login_failed": "failed"}
AUDIT_RESULTS = ("sent", "refused", "overflow")
DENIALS = {"login_denied": "not_allowed", "access_withdrawn": "access_withdrawn",
           "no_session": "no_session"}  # fmt: skip


class HelperOps:
    """``/metrics`` and ``/readyz`` of an auth helper (``hostmux.ops_server`` serves them)."""

    def __init__(self, counts: Counter[str], audit: VisitorAudit | None = None) -> None:
        from hostmux.metric_values import process_registry

        self._counts = counts
        self._audit = audit
        self._registry = process_registry("authhelper")
        self._registry.register(self)

    def __repr__(self) -> str:
        return f"<HelperOps {dict(self._counts)}>"

    async def metrics(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self._registry)

    async def readiness(self) -> Readiness:
        from hostmux.ops_server import Readiness

        return Readiness()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        logins = CounterMetricFamily(
            "hostmux_authhelper_logins", "OAuth2 logins finished, by result (denied: the "
            "portal says the user may not use this instance; failed: the portal did not answer)",
            labels=["result"],
        )  # fmt: skip
        for event, result in LOGIN_RESULTS.items():
            logins.add_metric([result], self._counts[event])
        yield logins
        denials = CounterMetricFamily(
            "hostmux_authhelper_denials", "requests kept from the app, by reason (no_session: "
            "sent to log in)", labels=["reason"],
        )  # fmt: skip
        for event, reason in DENIALS.items():
            denials.add_metric([reason], self._counts[event])
        yield denials
        if self._audit is not None:
            yield from self._audit_metrics(self._audit)

    def _audit_metrics(self, audit: VisitorAudit) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        records = CounterMetricFamily(
            "hostmux_authhelper_audit_records", "visitor audit records, by what became of "
            "them (sent: the portal took them; refused: dropped after a 4xx; overflow: "
            "dropped, the queue was full)", labels=["result"],
        )  # fmt: skip
        for result in AUDIT_RESULTS:
            records.add_metric([result], audit.counts[result])
        yield records
        yield GaugeMetricFamily(
            "hostmux_authhelper_audit_queued",
            "visitor audit records waiting to be sent (at most audit_queue_max)",
            value=audit.queued,
        )
