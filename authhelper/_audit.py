"""Visitor audit: who used this instance, when, from where — sent to the portal.

The helper knows each visitor (the portal user of the session). It records one
line per session start and one per request a session made, and sends them in
batches to ``POST {portal}/instances/{id}/audit`` (the portal contract, README).

The rules:

1. The request path pays little: ``visit`` (when a session's request is routed)
   stores the user and the ``X-Forwarded-For`` value under the request id, and
   ``finished`` (when its status is known) pops them and appends one small
   tuple of atomic values. Nothing is formatted, parsed or logged there.
2. A background task (``run``) formats each record once, writes it to the log
   (``event=visit``, one line) and sends batches of up to ``batch_max`` records,
   or what there is every ``flush_interval_s``.
3. Each batch is signed with a JWT from the instance key, as the listener signs
   its URL update (``iss`` = the instance's issuer, ``kid``, five minutes);
   its ``batch_sha256`` claim binds the token to that body, and its ``batch``
   id lets the portal ignore a batch sent again after a lost answer.
4. A timeout, a failed connection or a 5xx keeps the batch and retries it with
   jittered, capped back-off; a 4xx drops it (logged, counted as ``refused``):
   the portal has said it will never take it, and it must not block the rest.
5. At most ``queue_max`` records wait (unformatted + unsent), so a portal
   outage of that many records loses nothing; more are counted as ``overflow``
   and logged, and never slow a request. On shutdown the helper tries for
   ``SHUTDOWN_FLUSH_S`` to send what waits and logs what it could not.
6. The client address is the last ``X-Forwarded-For`` entry: the one the
   router appended (it drops what a browser sent unless that came from a
   trusted proxy, and appends the address it saw). It is believed only because
   the helper listens behind the listener, which only the router reaches; a
   process that can connect to the helper's port directly can write anything
   there (the README says so).

Without an instance key (``instance_key_file``) records are only logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hostmux.log import fields

if TYPE_CHECKING:
    import httpx

    import keys
    from hostmux.relay import RequestRecord

log = logging.getLogger("hostmux.authhelper")

# Each POST gets this long (as the listener's URL update).
SEND_TIMEOUT_S = 10.0
# Signed batches are short-lived: a leaked token is soon useless (as the listener's).
JWT_LIFETIME_S = 300
# Back-off between failed sends: full jitter up to base * 2^n, capped.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# How often the background task looks for new records (they are formatted and
# logged within this; sending waits for a full batch or the flush interval).
POLL_S = 0.25
# On shutdown, what waits gets this long to reach the portal.
SHUTDOWN_FLUSH_S = 5.0
# A path longer than this is cut (the router allows 8 KiB targets; a record stays small,
# so a batch of 500 stays well under the portal's 1 MiB).
MAX_PATH_CHARS = 1024
# The portal's answer is a status and maybe a line of JSON; more is not one.
_MAX_ANSWER_BYTES = 64 * 1024
# Requests routed but not finished yet: bounded by the connections in flight; a
# leak (never expected) is cut here rather than growing.
_MAX_PENDING = 100_000

# What an address the router writes may look like: IPv4, or IPv6 (maybe with an embedded IPv4).
_ADDRESS = re.compile(rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f:]{2,39}(?:[0-9.]{7,15})?")

SESSION = "session"
REQUEST = "request"

# (kind, unix time, user, X-Forwarded-For value, method, target, status); a session's
# method/target are "" and its status 0. Only atomic values: the garbage collector
# stops tracking such a tuple, and the request's header list is not kept alive.
_Raw = tuple[str, float, str, bytes, str, str, int]


def forwarded_for(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The request's last ``X-Forwarded-For`` value (b"" without one)."""
    last = b""
    for name, value in headers:
        if name == b"x-forwarded-for":
            last = value
    return last


def client_address(forwarded: bytes) -> str:
    """The last entry of an ``X-Forwarded-For`` value (the router's), or "" if unusable."""
    hop = forwarded.rsplit(b",", 1)[-1].strip()
    # The router writes a bare IPv4 or IPv6 address; a shape check is enough to keep
    # anything else out of the record (ipaddress would cost 5x as much, per record).
    return hop.decode("ascii") if _ADDRESS.fullmatch(hop) else ""


def audit_record(raw: _Raw, instance: str) -> dict[str, object]:
    """One record as the portal receives it and the log shows it."""
    kind, at, user, forwarded, method, target, status = raw
    record: dict[str, object] = {
        "kind": kind,
        "ts": round(at, 3),
        "user": user,
        "instance": instance,
        "client": client_address(forwarded),
    }
    if kind == REQUEST:
        record["method"] = method
        record["path"] = target.partition("?")[0][:MAX_PATH_CHARS]
        record["status"] = status
    return record


def batch_body(instance: str, batch_id: str, records: Sequence[dict[str, object]]) -> bytes:
    body = {"v": 1, "instance": instance, "batch": batch_id, "records": list(records)}
    return json.dumps(body, separators=(",", ":")).encode()


class VisitorAudit:
    """The audit queue of one helper and the task that drains it.

    Resource handling: ``run`` owns its httpx client; it returns after ``stop``
    is set and the last flush (bounded by ``SHUTDOWN_FLUSH_S``) is done.
    """

    def __init__(
        self,
        instance: str,
        *,
        audit_url: str,
        key: keys.InstanceKey | None,
        issuer: str,
        kid: str | None,
        queue_max: int,
        batch_max: int,
        flush_interval_s: float,
    ) -> None:
        self._instance = instance
        self._url = audit_url
        self._key = key
        self._issuer = issuer
        self._kid = kid
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._flush_s = flush_interval_s
        self._pending: dict[str, tuple[str, bytes]] = {}
        self._incoming: deque[_Raw] = deque()  # appended on the request path
        self._waiting: deque[dict[str, object]] = deque()  # formatted and logged, unsent
        # The batch being sent: its id and records, the same on every try.
        self._batch: tuple[str, list[dict[str, object]]] | None = None
        self._held = 0  # formatted records not yet sent: waiting + the batch being sent
        self._overflow_logged = 0
        # sent, refused (a 4xx dropped them), overflow (the queue was full), unsent
        # (still waiting at shutdown), retries (failed attempts).
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<VisitorAudit {self._instance} queued={self.queued}>"

    @property
    def queued(self) -> int:
        """Records not yet sent (or dropped), the batch being sent included."""
        return len(self._incoming) + self._held

    # -- the request path ------------------------------------------------------

    def visit(self, rid: str, user: str, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """A session's request was routed (its status comes to ``finished``)."""
        pending = self._pending
        if len(pending) >= _MAX_PENDING:
            pending.clear()
        pending[rid] = (user, forwarded_for(headers))

    def finished(self, record: RequestRecord) -> None:
        """A request ended: queue its summary if a session made it."""
        seen = self._pending.pop(record.request_id, None)
        if seen is None:
            return
        if len(self._incoming) + self._held >= self._queue_max:
            self.counts["overflow"] += 1
            return
        self._incoming.append((REQUEST, time.time(), seen[0], seen[1], record.method,
                               record.target, record.status))  # fmt: skip

    def session_started(self, user: str, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._append((SESSION, time.time(), user, forwarded_for(headers), "", "", 0))

    def _append(self, raw: _Raw) -> None:
        if len(self._incoming) + self._held >= self._queue_max:
            self.counts["overflow"] += 1
            return
        self._incoming.append(raw)

    # -- the background task -----------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        import httpx

        if self._key is None:
            hint = "set instance_key_file to send visits to the portal"
            log.warning(fields("audit_log_only", instance=self._instance, hint=hint))
        failures = 0
        next_try = 0.0  # monotonic: no send before (back-off)
        last_flush = time.monotonic()
        async with httpx.AsyncClient(timeout=SEND_TIMEOUT_S, follow_redirects=False) as client:
            while not stop.is_set():
                self._take_in()
                now = time.monotonic()
                due = self._held >= self._batch_max or now - last_flush >= self._flush_s
                if self._held and due and now >= next_try:
                    last_flush = now
                    if await self._send_batch(client):
                        failures = 0
                        continue  # maybe another full batch waits
                    failures += 1
                    next_try = time.monotonic() + random.uniform(
                        0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**failures)
                    )
                elif not self._held:
                    last_flush = now  # the interval counts from the first record
                try:
                    async with asyncio.timeout(POLL_S):
                        await stop.wait()
                except TimeoutError:
                    pass
            await self._last_flush(client)

    async def _last_flush(self, client: httpx.AsyncClient) -> None:
        self._take_in()
        try:
            async with asyncio.timeout(SHUTDOWN_FLUSH_S):
                while self._held and await self._send_batch(client):
                    pass
        except TimeoutError:
            pass
        if self._held:
            self.counts["unsent"] += self._held
            log.warning(fields("audit_unsent", instance=self._instance,
                               records=self._held))  # fmt: skip

    def _take_in(self) -> None:
        """Format and log what the request path queued; log new overflow."""
        incoming, instance = self._incoming, self._instance
        keep = self._key is not None
        logged = log.isEnabledFor(logging.INFO)  # formatting the line is most of its cost
        if not (logged or keep):
            incoming.clear()  # neither logged nor sent: nothing to format
        while incoming:
            record = audit_record(incoming.popleft(), instance)
            if logged:
                log.info(fields("visit", **record))
            if keep:
                self._waiting.append(record)
                self._held += 1
        overflow = self.counts["overflow"]
        if overflow != self._overflow_logged:
            log.warning(fields("audit_overflow", instance=instance,
                               dropped=overflow - self._overflow_logged, total=overflow,
                               queue_max=self._queue_max))  # fmt: skip
            self._overflow_logged = overflow

    async def _send_batch(self, client: httpx.AsyncClient) -> bool:
        """POST the oldest batch; True if it is done with (sent, or refused and dropped)."""
        import keys
        from hostmux.http_client import HTTP_CALL_FAILURES, describe, read_bounded

        assert self._key is not None
        if self._batch is None:
            waiting = self._waiting
            taken = [waiting.popleft() for _ in range(min(self._batch_max, len(waiting)))]
            # The same id and records on every try (the portal ignores a batch it has).
            self._batch = (secrets.token_urlsafe(16), taken)
        batch_id, batch = self._batch
        body = batch_body(self._instance, batch_id, batch)
        token = keys.sign_jwt(
            self._key, issuer=self._issuer, kid=self._kid, lifetime_s=JWT_LIFETIME_S,
            claims={"batch_sha256": hashlib.sha256(body).hexdigest()},
        )  # fmt: skip
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        try:
            async with client.stream("POST", self._url, content=body, headers=headers) as response:
                answer = await read_bounded(response, _MAX_ANSWER_BYTES)
        except HTTP_CALL_FAILURES as exc:
            reason = describe(exc)
        else:
            status = response.status_code
            if 200 <= status < 300:
                self._done_with_batch()
                self.counts["sent"] += len(batch)
                log.info(fields("audit_sent", instance=self._instance, records=len(batch),
                                batch=batch_id))  # fmt: skip
                return True
            if status < 500:
                self._done_with_batch()
                self.counts["refused"] += len(batch)
                said = answer[:200].decode("utf-8", "replace")
                log.warning(fields("audit_refused", instance=self._instance, status=status,
                                   records=len(batch), reason=said))  # fmt: skip
                return True
            reason = f"status {status}"
        self.counts["retries"] += 1
        log.warning(fields("audit_send_failed", instance=self._instance, reason=reason,
                           waiting=self.queued))  # fmt: skip
        return False

    def _done_with_batch(self) -> None:
        assert self._batch is not None
        self._held -= len(self._batch[1])
        self._batch = None
