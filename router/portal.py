"""The portal, seen from the router: instance keys to authenticate, events to report.

Instance keys. In portal mode the SSH user name is an instance id, and the
keys allowed to hold that instance's name are the portal's:
``GET <portal_keys_url with {id}>`` answers a JWKS (``{"keys": [jwk, ...]}``)
or OpenSSH authorized_keys lines. The rules:

1. Answers are cached for ``ttl_s`` (positive) or ``negative_ttl_s`` (404 or
   no keys), so a reconnect storm does not become a portal storm; concurrent
   look-ups of one id share one request.
2. Fail closed: a portal that is down, slow (``timeout_s``), or answers
   garbage authenticates nobody new. Tunnels already up are not touched.
3. Answers are bounded (size and key count) and parsed by well-kept code
   (joserfc via ``keys``; cryptography for OpenSSH lines).

Events. Every event is one JSON schema (version 1)::

    {"v": 1, "event": KIND, "name": NAME, "router": ROUTER, "ts": UNIX_TIME,
     "data": {...}}

``tunnel_up`` / ``tunnel_down`` carry ``data.url``, and in a cluster
``data.router_id`` and the name's ``data.generation`` (a name is up while any
router holds it: track it per router). A ``tunnel_down`` whose cause the router
knows says it in ``data.reason``: ``certificate_expired`` when the portal
certificate the tunnel was opened with passed its ``valid_before``. Events are
POSTed to ``events_url`` with ``X-Hostmux-Signature: sha256=<hex HMAC-SHA256 of
the body>`` under a shared secret, in order, from a bounded queue. Delivery rules:

1. 2xx: delivered. A portal answers 2xx to kinds it does not know, so a new
   kind never needs a portal upgrade first.
2. A timeout, a failed connection or a 5xx is retried (capped back-off): the
   portal is away, the event still matters.
3. Any other answer (4xx, 3xx) is final: the event is dropped, logged and
   counted (``hostmux_portal_events_total{result="refused"}``), so one event the
   portal will never take cannot block the queue.
4. When the queue is full the oldest event is dropped (logged, counted as
   ``overflow``), never the router's memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

import keys
from hostmux.http_client import HTTP_CALL_FAILURES, describe, read_bounded
from hostmux.log import fields
from hostmux.metric_values import DurationHistogram

log = logging.getLogger("hostmux.portal")

# A JWKS for one instance is a few KiB; anything much larger is not one.
_MAX_KEYS_RESPONSE_BYTES = 64 * 1024
_MAX_KEYS_PER_INSTANCE = 32
# Events waiting for the portal; past this the oldest are dropped.
_MAX_PENDING_EVENTS = 10_000
_EVENT_RETRY_CAP_S = 30.0
# The readiness probe's instance id: a valid-looking id that names no instance (the
# portal answers 404, cached as a negative answer like any other).
_PROBE_ID = "hostmux-readiness-probe"


class PortalUnavailable(Exception):
    """The portal did not give a usable answer; the message says why."""


@dataclass(slots=True)
class _CacheEntry:
    fingerprints: frozenset[str]
    expires: float
    exists: bool = True  # the portal answered 200 (False: 404, no such instance)


class PortalKeys:
    """Instance id → the SHA256 fingerprints of the keys the portal lists for it."""

    def __init__(
        self,
        url_template: str,
        *,
        timeout_s: float,
        ttl_s: float,
        negative_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._template = url_template
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._clock = clock
        self._cache: dict[str, _CacheEntry] = {}
        self._inflight: dict[str, asyncio.Future[frozenset[str]]] = {}
        self._client: httpx.AsyncClient | None = None
        # For metrics and /readyz: how long look-ups take, and the last one's outcome.
        self.lookup_seconds = DurationHistogram()
        self.problem: str | None = None  # why the last look-up or probe failed; None: it did not
        self.checked_at: float | None = None  # when that was (on ``clock``)

    def __repr__(self) -> str:
        return f"<PortalKeys {self._template} cached={len(self._cache)}>"

    async def probe(self) -> str | None:
        """Ask the portal once (an id no instance has: any answer below 500 means it is
        up); the problem, or None. Updates ``problem``, as a real look-up does."""
        try:
            await self._fetch(_PROBE_ID)
        except PortalUnavailable as exc:
            return str(exc)
        return None

    def url_for(self, instance_id: str) -> str:
        return self._template.replace("{id}", instance_id)

    def retune(self, *, timeout_s: float, ttl_s: float, negative_ttl_s: float) -> None:
        """New timeout and cache lifetimes (a reload): for look-ups and answers from now
        on; what is cached keeps its expiry."""
        self._timeout_s, self._ttl_s, self._negative_ttl_s = timeout_s, ttl_s, negative_ttl_s
        if self._client is not None:
            self._client.timeout = httpx.Timeout(timeout_s)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def fingerprints(self, instance_id: str, *, refresh: bool = False) -> frozenset[str]:
        """The instance's key fingerprints (empty if none); raises PortalUnavailable."""
        now = self._clock()
        entry = self._cache.get(instance_id)
        if entry is not None and entry.expires > now and not refresh:
            return entry.fingerprints
        pending = self._inflight.get(instance_id)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(instance_id))
            self._inflight[instance_id] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(instance_id, None))
        return await asyncio.shield(pending)

    def known(self, instance_id: str) -> bool | None:
        """From the cache only: whether the portal has this instance (None: not cached)."""
        entry = self._cache.get(instance_id)
        if entry is None or entry.expires <= self._clock():
            return None
        return entry.exists

    async def exists(self, instance_id: str) -> bool:
        """Whether the portal has this instance (its keys URL answers 200, not 404);
        cached like the keys (it is the same request). Raises PortalUnavailable."""
        await self.fingerprints(instance_id)
        entry = self._cache.get(instance_id)
        return entry is not None and entry.exists

    async def _fetch(self, instance_id: str) -> frozenset[str]:
        started = self._clock()
        try:
            found = await self._ask(instance_id)
        except PortalUnavailable as exc:
            self.problem = str(exc)
            raise
        else:
            self.problem = None
            return found
        finally:
            self.checked_at = now = self._clock()
            self.lookup_seconds.observe(now - started)

    async def _ask(self, instance_id: str) -> frozenset[str]:
        url = self.url_for(instance_id)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.stream(
                    "GET", url, headers={"accept": "application/jwk-set+json, text/plain"}
                ) as response:
                    body = await read_bounded(response, _MAX_KEYS_RESPONSE_BYTES)
        except HTTP_CALL_FAILURES as exc:
            log.warning(fields("portal_unavailable", url=url, reason=describe(exc)))
            raise PortalUnavailable(f"the portal did not answer ({describe(exc)})") from None
        if response.status_code == 404:
            return self._remember(instance_id, frozenset(), self._negative_ttl_s, exists=False)
        if response.status_code != 200:
            log.warning(fields("portal_unavailable", url=url, status=response.status_code))
            raise PortalUnavailable(f"the portal answered {response.status_code}")
        try:
            found = parse_instance_keys(body, response.headers.get("content-type", ""))
        except ValueError as exc:
            log.warning(fields("portal_garbage", url=url, reason=str(exc)))
            raise PortalUnavailable(f"the portal's answer is not usable: {exc}") from None
        ttl = self._ttl_s if found else self._negative_ttl_s
        return self._remember(instance_id, found, ttl)

    def _remember(
        self, instance_id: str, found: frozenset[str], ttl: float, *, exists: bool = True
    ) -> frozenset[str]:
        self._cache[instance_id] = _CacheEntry(found, self._clock() + ttl, exists)
        if len(self._cache) > 100_000:  # bound memory: forget the oldest half
            for stale in list(self._cache)[: len(self._cache) // 2]:
                del self._cache[stale]
        return found


def parse_instance_keys(body: bytes, content_type: str) -> frozenset[str]:
    """A JWKS or authorized_keys text → key fingerprints; ValueError for garbage."""
    text = body.decode("utf-8", "strict") if body else ""
    lines: list[str] = []
    if "json" in content_type or text.lstrip().startswith("{"):
        document = json.loads(text)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("expected a JWKS object with a 'keys' list")
        for jwk in document["keys"]:
            if not isinstance(jwk, dict):
                raise ValueError("a JWKS entry is not an object")
            try:
                lines.append(keys.openssh_public_from_jwk(jwk))
            except keys.KeysError as exc:
                raise ValueError(str(exc)) from None
    else:
        lines = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if len(lines) > _MAX_KEYS_PER_INSTANCE:
        raise ValueError(f"more than {_MAX_KEYS_PER_INSTANCE} keys")
    try:
        return frozenset(keys.fingerprint_of_public_line(line) for line in lines)
    except keys.KeysError as exc:
        raise ValueError(str(exc)) from None


def sign_event_body(secret: bytes, body: bytes) -> str:
    """The ``X-Hostmux-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


EVENT_SCHEMA_VERSION = 1


def event_body(
    event: str, name: str, router: str, data: dict[str, object], *, ts: float | None = None
) -> dict[str, object]:
    """One event in the version-1 schema (the portal contract, ``docs/deploy.md``)."""
    return {
        "v": EVENT_SCHEMA_VERSION,
        "event": event,
        "name": name,
        "router": router,
        "ts": time.time() if ts is None else ts,
        "data": data,
    }


def _retryable(status: int) -> bool:
    """Whether an answer means "try again later" (5xx) rather than "never" (the rest)."""
    return status >= 500


@dataclass
class TunnelEvents:
    """Reports events (tunnel up/down, ...) to the portal, in order, without blocking the router.

    Resource handling: ``run`` is the one task that sends; ``publish`` and
    ``send`` only queue. Error handling: timeouts, failed connections and 5xx
    are retried with capped exponential back-off; any other non-2xx answer drops
    the event (logged, counted); nothing here can fail a tunnel.
    """

    url: str
    secret: bytes
    router_name: str
    # This router's id in a cluster: each event then says which router holds (or let go
    # of) the name, and the name's generation; a name is up while any router holds it.
    router_id: str | None = None
    timeout_s: float = 5.0
    retry_first_s: float = 0.5  # the first back-off after a failed delivery
    retry_cap_s: float = _EVENT_RETRY_CAP_S
    max_pending: int = _MAX_PENDING_EVENTS
    # Outcomes so far, for metrics: delivered, refused (a final non-2xx), overflow.
    counts: dict[str, int] = field(
        default_factory=lambda: {"delivered": 0, "refused": 0, "overflow": 0}
    )
    _queue: deque[dict[str, object]] = field(default_factory=deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(
        self,
        event: str,
        name: str,
        url: str | None,
        generation: int = 0,
        reason: str | None = None,
    ) -> None:
        """A tunnel event (the hub's observer signature, ``router.tunnels.TunnelObserver``)."""
        data: dict[str, object] = {"url": url}
        if self.router_id is not None:
            data |= {"router_id": self.router_id, "generation": generation}
        if reason is not None:
            data["reason"] = reason
        self.send(event, name, data)

    def send(self, event: str, name: str, data: dict[str, object]) -> None:
        """Queue any event kind for ``name`` (the portal answers 2xx to kinds it does not know)."""
        if len(self._queue) >= self.max_pending:
            dropped = self._queue.popleft()
            self.counts["overflow"] += 1
            log.warning(
                fields("portal_event_dropped", kind=dropped["event"], name=dropped["name"],
                       reason="queue full")
            )  # fmt: skip
        self._queue.append(event_body(event, name, self.router_name, data))
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            delay = self.retry_first_s
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                event = self._queue[0]
                body = json.dumps(event, separators=(",", ":")).encode()
                headers = {
                    "content-type": "application/json",
                    "x-hostmux-signature": sign_event_body(self.secret, body),
                }
                status = 0
                try:
                    response = await client.post(self.url, content=body, headers=headers)
                    status = response.status_code
                    reason = f"status {status}"
                except HTTP_CALL_FAILURES as exc:
                    reason = describe(exc)
                if 200 <= status < 300:
                    self._queue.popleft()
                    self.counts["delivered"] += 1
                    log.info(
                        fields("portal_event_delivered", kind=event["event"], name=event["name"])
                    )
                    delay = self.retry_first_s
                    continue
                if status and not _retryable(status):
                    # Final: the portal will not take this event, however often it is sent.
                    self._queue.popleft()
                    self.counts["refused"] += 1
                    log.warning(
                        fields("portal_event_dropped", kind=event["event"], name=event["name"],
                               reason=reason)
                    )  # fmt: skip
                    delay = self.retry_first_s
                    continue
                log.warning(
                    fields("portal_event_failed", url=self.url, reason=reason, retry_s=delay)
                )
                await asyncio.sleep(delay)  # back-off between delivery attempts
                delay = min(delay * 2, self.retry_cap_s)
