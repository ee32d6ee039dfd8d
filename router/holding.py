"""The holding page: "starting…" for a portal instance whose tunnel is not up yet.

Portal mode only (``portal_keys_url`` set). When a request names no tunnel
held anywhere, the router asks whether the portal knows the name as an
instance (its keys URL: 200 = exists, 404 = unknown) and answers:

1. Exists: 503 with ``Retry-After`` and a page that reloads itself
   (``pages.holding_page``), so the browser shows the app once its listener is
   up. This replaces "502 tunnel offline" for names the portal knows.
2. Unknown (404), or the portal unavailable: what the router answered before
   (404 no such tunnel; 502 offline for a name reserved after its tunnel left).
3. The answer comes from the portal keys' caches first (``portal_cache_ttl_s``,
   ``portal_negative_cache_ttl_s``). A look-up the caches cannot answer costs
   the client's IP address one token of ``holding_lookups_per_minute``; over
   that the router answers as in 2 without asking, so a flood of random names
   from one address is not a flood of portal requests.

Pure decisions plus one awaited look-up; the clock is injected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hostmux.http1.pages import Page, holding_page
from hostmux.log import fields
from router.portal import PortalKeys, PortalUnavailable

log = logging.getLogger("hostmux.holding")

# The page's reload period, and Retry-After for other clients.
RETRY_AFTER_S = 5
# Client addresses remembered by the rate limit; past this the oldest are forgotten
# (a forgotten address starts again with a full bucket).
MAX_TRACKED_IPS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class LookupLimit:
    """A token bucket per client IP: ``per_minute`` look-ups, refilled evenly."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __repr__(self) -> str:
        return f"<LookupLimit {self.per_minute}/min tracked={len(self._buckets)}>"

    def allow(self, ip: str) -> bool:
        if self.per_minute <= 0:
            return False
        now = self._clock()
        bucket = self._buckets.pop(ip, None)  # re-inserted last: the dict is oldest-first
        if bucket is None:
            bucket = _Bucket(float(self.per_minute), now)
        bucket.tokens = min(
            float(self.per_minute), bucket.tokens + (now - bucket.at) * self.per_minute / 60
        )
        bucket.at = now
        self._buckets[ip] = bucket
        if len(self._buckets) > MAX_TRACKED_IPS:
            del self._buckets[next(iter(self._buckets))]
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


class HoldingPages:
    """Decides holding page or not for a name no tunnel serves (see the module doc)."""

    def __init__(self, portal: PortalKeys, limit: LookupLimit) -> None:
        self.portal = portal
        self.limit = limit
        # For metrics: pages served, look-ups asked, look-ups refused by the limit.
        self.counts = {"holding": 0, "asked": 0, "limited": 0}

    def __repr__(self) -> str:
        return f"<HoldingPages {self.counts} {self.limit!r}>"

    def answer(
        self, name: str, client_ip: str, request_id: str, as_html: bool, otherwise: Page
    ) -> Page | Awaitable[Page]:
        """The holding page if the portal knows ``name``; else ``otherwise`` (404/502)."""
        known = self.portal.known(name)
        if known is not None:
            return self._page(name, request_id, as_html) if known else otherwise
        if not self.limit.allow(client_ip):
            self.counts["limited"] += 1
            return otherwise
        return self._ask(name, request_id, as_html, otherwise)

    async def _ask(self, name: str, request_id: str, as_html: bool, otherwise: Page) -> Page:
        self.counts["asked"] += 1
        try:
            exists = await self.portal.exists(name)
        except PortalUnavailable as exc:
            log.info(fields("holding_lookup_failed", name=name, reason=str(exc)))
            return otherwise
        return self._page(name, request_id, as_html) if exists else otherwise

    def _page(self, name: str, request_id: str, as_html: bool) -> Page:
        self.counts["holding"] += 1
        return holding_page(
            name, retry_after_s=RETRY_AFTER_S, request_id=request_id, as_html=as_html
        )
