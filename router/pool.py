r"""Pools: several tunnels of one owner serving one name, and how a request picks one.

Rules this module enforces (the route table holds one tunnel per name, the
pool's *head*; ``router.tunnels`` keeps the head a live member):

1. A pool is one name's members on this router; a member is one tunnel client
   process, known by its *member id* (``HOSTMUX_POOL_MEMBER``, the listener's
   random id per process; else the tunnel's own lease id). A member that comes
   again with the same id (a reconnect, a renewed certificate's swap) replaces
   its old tunnel, as a non-pool tunnel replaces its name's. Each replacement
   or departure starts a new ``epoch``: a kept-alive browser connection opens
   its next request anew (rule 2) instead of reusing a channel of a tunnel
   that was replaced and will close.
2. A browser connection picks its member when it opens its upstream channel:
   the member with the fewest *outstanding requests* here, counted as the
   channels this router has open to it (a keep-alive connection and a
   WebSocket hold one channel for their life, so each open channel is a
   request in flight or the next one of a connection bound to that member).
   Ties go round-robin, so fresh connections spread evenly. Requests of one
   keep-alive connection and a WebSocket stay on the member that opened
   their channel.
3. A member whose channel open fails (refused, or no answer within
   ``open_timeout_s``) is skipped for ``backoff_s`` and the next member is
   tried at once; only when every member is backing off are they tried anyway.
4. A member that goes away takes only its own channels (their requests fail);
   the others go on.
5. Sticky sessions (``affinity = "cookie"``): the router sets
   ``hostmux_pool=<token>`` on the exact host (no Domain; HttpOnly;
   SameSite=Lax; Secure over HTTPS); a browser connection that brings a token
   of a live, healthy member opens its channel to it. The token is an HMAC of
   the name and the member id under the router's secret: it names nothing
   outside that name and cannot be forged.

Sans-IO but for ``Pool.open_stream``: selection, back-off and tokens are pure.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hostmux.http1.headers import Headers
from hostmux.log import fields
from hostmux.relay import ByteStream, UpstreamUnavailable

if TYPE_CHECKING:
    from router.tunnels import Tunnel

log = logging.getLogger("hostmux.tunnels")

COOKIE_NAME = b"hostmux_pool"
AFFINITIES = ("none", "cookie")
# Reason: one member's channel open gets this share of connect_timeout_s, so a member that
# never answers is backed off and a second member is tried before the relay's 504.
POOL_OPEN_SHARE = 0.45
# Reason: bounds what a client may send as its member id (it becomes a dict key and a log field).
MAX_MEMBER_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The router's pool options (``router.config``: pool_affinity, pool_backoff_s)."""

    secret: bytes  # the cookie tokens' HMAC key
    affinity: str = "none"
    backoff_s: float = 10.0
    open_timeout_s: float = 4.0  # one member's channel open (a share of connect_timeout_s)


@dataclass(eq=False, slots=True)
class Member:
    tunnel: Tunnel
    member_id: str
    token: bytes  # the affinity cookie's value for this member
    outstanding: int = 0  # channels open to it from this router (rule 2)
    failures: int = 0  # channel opens failed in a row
    backoff_until: float = 0.0  # monotonic time; skipped until then (rule 3)

    def __repr__(self) -> str:
        return f"<Member {self.member_id} outstanding={self.outstanding}>"


def check_member_id(value: str) -> str | None:
    """The member id a client sent, or None when it is not a usable one (ignored)."""
    usable = 0 < len(value) <= MAX_MEMBER_ID_CHARS and value.isascii() and value.isprintable()
    return value if usable and " " not in value else None


@dataclass(eq=False)
class Pool:
    """One name's members on this router (rules 1-5)."""

    name: str
    settings: PoolSettings
    members: list[Member] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    _turn: int = 0  # where the next tie-break starts (round-robin)
    epoch: int = 0  # members replaced or gone so far (rule 1)

    def __repr__(self) -> str:
        return f"<Pool {self.name} members={len(self.members)}>"

    # -- membership ----------------------------------------------------------------

    def member_of(self, tunnel: Tunnel) -> Member | None:
        return next((m for m in self.members if m.tunnel is tunnel), None)

    def add(self, tunnel: Tunnel, member_id: str) -> Tunnel | None:
        """Add ``tunnel`` as member ``member_id``; returns the tunnel it replaced (rule 1)."""
        replaced = None
        for member in self.members:
            if member.member_id == member_id and member.tunnel is not tunnel:
                replaced = member.tunnel
                self.members.remove(member)
                self.epoch += 1
                break
        if self.member_of(tunnel) is None:
            self.members.append(Member(tunnel, member_id, self.token_for(member_id)))
        return replaced

    def rename(self, tunnel: Tunnel, member_id: str) -> Tunnel | None:
        """``tunnel`` says its member id late (OpenSSH's env); returns a tunnel it replaced."""
        member = self.member_of(tunnel)
        if member is None or member.member_id == member_id:
            return None
        self.members.remove(member)
        replaced = self.add(tunnel, member_id)
        new = self.member_of(tunnel)
        assert new is not None
        new.outstanding = member.outstanding  # its channels stay open
        return replaced

    def remove(self, tunnel: Tunnel) -> bool:
        member = self.member_of(tunnel)
        if member is None:
            return False
        self.members.remove(member)
        self.epoch += 1
        return True

    def token_for(self, member_id: str) -> bytes:
        mac = hmac.new(self.settings.secret, digestmod=hashlib.sha256)
        mac.update(self.name.encode() + b"\0" + member_id.encode())
        return base64.urlsafe_b64encode(mac.digest()[:18])

    # -- selection (rules 2, 3 and 5) ----------------------------------------------

    def pick(self, exclude: Sequence[Member] = ()) -> Member | None:
        """The member a new channel goes to: fewest outstanding among those not backing off."""
        now = self.clock()
        members = self.members
        count = len(members)
        if count == 0:
            return None
        healthy = [m for m in members if m.backoff_until <= now and m not in exclude]
        candidates = healthy or [m for m in members if m not in exclude]
        if not candidates:
            return None
        least = min(m.outstanding for m in candidates)
        start = self._turn % count
        for step in range(count):
            member = members[(start + step) % count]
            if member.outstanding == least and member in candidates:
                self._turn = (start + step + 1) % count
                return member
        return None  # not reached: a candidate has the least count

    def by_token(self, token: bytes) -> Member | None:
        """The healthy member an affinity cookie names, if any."""
        now = self.clock()
        for member in self.members:
            if hmac.compare_digest(member.token, token):
                return member if member.backoff_until <= now else None
        return None

    def failed(self, member: Member, reason: str = "") -> None:
        member.failures += 1
        member.backoff_until = self.clock() + self.settings.backoff_s
        if reason:
            log.info(
                fields(
                    "pool_member_backoff", name=self.name, member=member.member_id,
                    peer=member.tunnel.peer, failures=member.failures,
                    backoff_s=self.settings.backoff_s, reason=reason,
                )
            )  # fmt: skip

    # -- opening a channel -----------------------------------------------------------

    async def open_stream(
        self, orig_host: str, orig_port: int, preferred: Member | None = None
    ) -> tuple[ByteStream, Member]:
        """A channel to the member ``pick`` chooses (``preferred`` first, if given); a
        member that fails is backed off and the next one tried (rule 3).

        Error handling: UpstreamUnavailable once every member failed.
        """
        tried: list[Member] = []
        error: str | None = None
        while True:
            member = preferred if preferred is not None else self.pick(tried)
            preferred = None
            if member is None or member in tried:
                break
            tried.append(member)
            try:
                async with asyncio.timeout(self.settings.open_timeout_s):
                    stream = await member.tunnel.open_stream(orig_host, orig_port)
            except UpstreamUnavailable as exc:
                error = str(exc)
                self.failed(member, error)
                continue
            except TimeoutError:
                error = "the tunnel client did not open a channel in time"
                self.failed(member, error)
                continue
            member.failures = 0
            member.backoff_until = 0.0
            member.outstanding += 1
            on_lost = getattr(stream, "on_lost", False)
            if on_lost is None:  # a channel: counted until it ends
                stream.on_lost = _Release(member)  # type: ignore[attr-defined]
            return stream, member
        why = f" ({error})" if error else ""
        raise UpstreamUnavailable(f"no member of the pool {self.name!r} could be reached{why}")


@dataclass(slots=True)
class _Release:
    member: Member

    def __call__(self) -> None:
        self.member.outstanding -= 1


class Pick:
    """One request's way into a pool: what the relay calls to open its upstream, and the
    affinity cookie its responses carry (bound to the upstream the open made)."""

    __slots__ = ("_base", "_cookie", "_ip", "_pool", "_port", "_preferred", "member")

    def __init__(
        self,
        pool: Pool,
        ip: str,
        port: int,
        preferred: Member | None,
        cookie: bytes | None,
        base: Callable[[Headers], Headers] | None,
    ) -> None:
        self._pool = pool
        self._base = base  # the router's own rules for the app's headers (host-only cookies)
        self._ip = ip
        self._port = port
        self._preferred = preferred
        self._cookie = cookie  # the Set-Cookie attributes after the value; None: no cookie
        self.member: Member | None = None

    def open(self) -> Awaitable[ByteStream]:
        return self._open()

    async def _open(self) -> ByteStream:
        stream, self.member = await self._pool.open_stream(self._ip, self._port, self._preferred)
        return stream

    def response_headers(self, headers: Headers) -> Headers:
        """Adds the member's cookie unless the request came with it (rule 5)."""
        if self._base is not None:
            headers = self._base(headers)
        member = self.member
        if self._cookie is None or member is None or member is self._preferred:
            return headers
        value = COOKIE_NAME + b"=" + member.token + self._cookie
        return [*headers, (b"set-cookie", value)]


def cookie_token(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The value of the request's ``hostmux_pool`` cookie, if it sent one."""
    prefix = COOKIE_NAME + b"="
    for name, value in headers:
        if name != b"cookie" or prefix not in value:
            continue
        for part in value.split(b";"):
            part = part.strip()
            if part.startswith(prefix):
                return part[len(prefix) :]
    return None


def cookie_attributes(secure: bool) -> bytes:
    return b"; Path=/; HttpOnly; SameSite=Lax" + (b"; Secure" if secure else b"")
