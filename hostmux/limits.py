"""Resource limits (pure): connection counts per client and overall, and failure rate limits.

Rules:

1. A new browser connection is admitted only while the router holds fewer
   than ``max_total`` and its IP fewer than ``max_per_ip``; a refused one is
   aborted at once (``hostmux.relay.front_door``): no request is read and no
   status is sent, so an address cannot hold the router's file descriptors
   hostage.
2. SSH clients are counted per key (or instance): connections and tunnels
   each have a cap, so one leaked key cannot fill the route table.
3. Failed SSH authentications are rate-limited per IP with a token bucket
   (``burst`` at once, refilling at ``per_minute``); an IP without tokens is
   disconnected before it may try a key — brute force and key scanning slow
   to a crawl, honest reconnects are untouched.

The clock is injected so the rules are tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Buckets for IPs that stopped failing are forgotten after this long idle.
_BUCKET_IDLE_S = 3600.0
# Forget idle buckets once there are this many (bounds memory under a scan).
_MAX_BUCKETS = 100_000


@dataclass
class ConnectionCounts:
    """Live connections, overall and per key (an IP, a key fingerprint, ...)."""

    max_total: int
    max_per_key: int
    total: int = 0
    per_key: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # connections refused so far (for metrics)

    def admit(self, key: str) -> bool:
        """Count a new connection if the limits allow it; True if admitted."""
        if self.total >= self.max_total or self.per_key.get(key, 0) >= self.max_per_key:
            self.refused += 1
            return False
        self.total += 1
        self.per_key[key] = self.per_key.get(key, 0) + 1
        return True

    def release(self, key: str) -> None:
        count = self.per_key.get(key, 0)
        if count <= 0:
            return
        self.total -= 1
        if count == 1:
            del self.per_key[key]
        else:
            self.per_key[key] = count - 1


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    """Token buckets per IP for failures (e.g. SSH authentication)."""

    def __init__(
        self, *, burst: int, per_minute: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._burst = float(burst)
        self._rate_per_s = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __repr__(self) -> str:
        return f"<FailureLimiter burst={self._burst:g} tracked={len(self._buckets)}>"

    def retune(self, *, burst: int, per_minute: float) -> None:
        """New limits (a reload); each IP's bucket is kept, capped at the new burst."""
        self._burst = float(burst)
        self._rate_per_s = per_minute / 60.0
        for bucket in self._buckets.values():
            bucket.tokens = min(bucket.tokens, self._burst)

    def allowed(self, ip: str) -> bool:
        """May ``ip`` try (again)? Does not spend a token."""
        return self._refill(ip).tokens >= 1.0

    def failed(self, ip: str) -> None:
        """Spend a token for a failure from ``ip``."""
        bucket = self._refill(ip)
        bucket.tokens = max(bucket.tokens - 1.0, 0.0)

    def _refill(self, ip: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_idle(now)
            bucket = self._buckets[ip] = _Bucket(self._burst, now)
            return bucket
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate_per_s)
        bucket.updated = now
        return bucket

    def _forget_idle(self, now: float) -> None:
        for ip in [ip for ip, b in self._buckets.items() if now - b.updated > _BUCKET_IDLE_S]:
            del self._buckets[ip]
        if len(self._buckets) >= _MAX_BUCKETS:  # all recent: drop the full ones first
            for ip in [ip for ip, b in self._buckets.items() if b.tokens >= self._burst]:
                del self._buckets[ip]
