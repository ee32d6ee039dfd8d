"""The route registry in Redis (or Valkey), for routers that form a cluster.

The rules run inside Redis as the Lua scripts of ``router.registry.scripts``,
registered once: redis-py sends each by EVALSHA and falls back to loading it
when the server answers NOSCRIPT (after a restart, say). This module only
encodes arguments, decodes answers, and translates redis-py's errors at the
boundary (``_translated``), so nothing above it imports redis.

Every command is bounded by ``timeout_s`` (socket connect and read timeouts)
and at most ``RETRIES`` quick retries, so an unreachable Redis is a
RegistryUnavailable within a few seconds, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from router.registry import scripts
from router.registry.model import (
    DEFAULT_LEASE_TTL_S,
    DEFAULT_PREFIX,
    Claim,
    ClaimKind,
    Holder,
    Invalidation,
    Lease,
    LeaseLost,
    NameTaken,
    RegistryError,
    RegistryUnavailable,
    Renewal,
    Route,
    check_id,
)
from router.routing import NameState

# Reason: a Redis on the LAN answers in milliseconds; 2 s is a dead or stalled one.
DEFAULT_TIMEOUT_S = 2.0
# Reason: one retry rides over a dropped idle connection; more only delays failing static.
RETRIES = 1
# Reason: leases renewed in one script; bounds how long one call blocks Redis.
RENEW_BATCH = 500


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """redis-py's and the socket's errors become the registry's, with one clear line.

    A cancellation that redis-py turned into one of its errors (a connect
    cancelled inside its timeout) stays a cancellation: the caller's loop would
    otherwise take it for an outage, retry, and never stop.
    """
    try:
        yield
    except (redis.exceptions.RedisError, TimeoutError, OSError) as error:
        _raise_if_cancelled()
        raise _registry_error(what, error) from error


def refused_credentials(error: BaseException) -> bool:
    """Whether Redis refused the router's user, password or permissions (redis-py reads
    the WRONGPASS and NOAUTH replies as ``AuthenticationError``, NOPERM as
    ``NoPermissionError``): the operator's to fix, not an outage."""
    return isinstance(
        error, redis.exceptions.AuthenticationError | redis.exceptions.NoPermissionError
    )


def _registry_error(what: str, error: Exception) -> RegistryError:
    if refused_credentials(error):
        return RegistryError(f"registry {what}: {error}")
    if isinstance(
        error,
        redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | TimeoutError | OSError,
    ):
        return RegistryUnavailable(f"registry {what}: {error or type(error).__name__}")
    return RegistryError(f"registry {what}: {error}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _seconds(ms: Any) -> float:
    return int(_text(ms)) / 1000


class RedisRegistry:
    """The cluster's registry: one Redis primary, keys and channel under ``prefix``."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        subscriber: redis.asyncio.Redis | None = None,
        reservation_s: float,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._client = client
        # Subscriptions without retries: a silent reconnect would hide missed messages.
        self._subscriber = subscriber or client
        self._prefix = prefix
        self._channel = f"{prefix}routes"
        self._lease_ttl_s = lease_ttl_s
        self._timeout_s = timeout_s
        self._common: list[str | int] = [
            prefix,
            round(reservation_s * 1000),
            round(lease_ttl_s * 1000),
        ]
        self._claim_script = client.register_script(scripts.CLAIM)
        self._renew_script = client.register_script(scripts.RENEW)
        self._release_script = client.register_script(scripts.RELEASE)
        self._release_router_script = client.register_script(scripts.RELEASE_ROUTER)
        self._lookup_script = client.register_script(scripts.LOOKUP)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        reservation_s: float,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> RedisRegistry:
        """``redis://[user:password@]host:port/db`` or ``rediss://`` (TLS); connects lazily."""
        client, subscriber = (
            redis.asyncio.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries),
            )
            for retries in (RETRIES, 0)
        )
        return cls(
            client,
            subscriber=subscriber,
            reservation_s=reservation_s,
            lease_ttl_s=lease_ttl_s,
            prefix=prefix,
            timeout_s=timeout_s,
        )

    def __repr__(self) -> str:
        return f"<RedisRegistry prefix={self._prefix!r} lease_ttl_s={self._lease_ttl_s}>"

    @property
    def lease_ttl_s(self) -> float:
        return self._lease_ttl_s

    async def claim(self, name: str, owner: str, router_id: str, connection_id: str) -> Claim:
        args = [name, check_id("owner", owner), check_id("router id", router_id)]
        args.append(check_id("connection id", connection_id))
        with _translated("claim"):
            reply = await self._claim_script(keys=[], args=[*self._common, *args])
        return _claim_from(name, connection_id, reply)

    async def renew(self, name: str, owner: str, router_id: str, connection_id: str) -> Claim:
        renewal = await self.renew_all(router_id, [Lease(name, owner, connection_id)])
        if renewal.lost:
            raise renewal.lost[0]
        return renewal.kept[0]

    async def renew_all(self, router_id: str, leases: Sequence[Lease]) -> Renewal:
        check_id("router id", router_id)
        kept: list[Claim] = []
        lost: list[RegistryError] = []
        for start in range(0, len(leases), RENEW_BATCH):
            batch = leases[start : start + RENEW_BATCH]
            args: list[str | int] = [*self._common, router_id]
            for lease in batch:
                args += [lease.name, check_id("owner", lease.owner)]
                args.append(check_id("connection id", lease.connection_id))
            with _translated("renew"):
                replies = await self._renew_script(keys=[], args=args)
            for lease, reply in zip(batch, replies, strict=True):
                try:
                    kept.append(_claim_from(lease.name, lease.connection_id, reply))
                except (NameTaken, LeaseLost) as error:
                    lost.append(error)
        return Renewal(kept=tuple(kept), lost=tuple(lost))

    async def release(
        self, name: str, router_id: str, connection_id: str, *, reserve: bool = True
    ) -> bool:
        with _translated("release"):
            reply = await self._release_script(
                keys=[],
                args=[*self._common, name, router_id, connection_id, "1" if reserve else "0"],
            )
        return bool(int(reply))

    async def release_router(self, router_id: str) -> int:
        with _translated("release of a router"):
            reply = await self._release_router_script(keys=[], args=[*self._common, router_id])
        return int(reply)

    async def lookup(self, name: str) -> Route | None:
        with _translated("lookup"):
            reply = await self._lookup_script(keys=[], args=[*self._common, name])
        if reply is None:
            return None
        owner, generation, reserved_until, flat = reply
        holders = []
        for router, value in zip(flat[::2], flat[1::2], strict=True):
            expires, _, connection = _text(value).partition(" ")
            holders.append(Holder(_text(router), connection, _seconds(expires)))
        holders.sort(key=lambda holder: holder.router_id)
        return Route(
            name=name,
            owner=_text(owner),
            generation=int(_text(generation)),
            holders=tuple(holders),
            reserved_until=None if holders else _seconds(reserved_until),
        )

    async def advertise(self, router_id: str, address: str, ttl_s: float) -> None:
        key = f"{self._prefix}peer:{check_id('router id', router_id)}"
        with _translated("advertise"):
            await self._client.set(key, check_id("address", address), px=round(ttl_s * 1000))

    async def peer_address(self, router_id: str) -> str | None:
        with _translated("peer address"):
            value = await self._client.get(f"{self._prefix}peer:{check_id('router id', router_id)}")
        return None if value is None else _text(value)

    async def ping(self) -> None:
        with _translated("ping"):
            await self._client.ping()

    @asynccontextmanager
    async def invalidations(self) -> AsyncIterator[AsyncIterator[Invalidation]]:
        """Subscribe to ``<prefix>routes``; subscribed (acknowledged) once entered.

        Resource handling: the subscription has its own connection, closed
        when the block ends.

        Error handling: RegistryUnavailable on entry, or from the iterator when
        the connection drops or a keep-alive PING goes unanswered: messages may
        have been missed, so the caller drops its whole cache and subscribes again.
        """
        pubsub = self._subscriber.pubsub()
        try:
            with _translated("subscribe"):
                async with asyncio.timeout(self._timeout_s):
                    await pubsub.subscribe(self._channel)
                    while True:
                        _raise_if_cancelled()
                        message = await pubsub.get_message(timeout=self._timeout_s)
                        if message is not None and message["type"] == "subscribe":
                            break
            _raise_if_cancelled()
            yield self._messages(pubsub)
        finally:
            with _translated("unsubscribe"):
                await pubsub.aclose()

    async def _messages(self, pubsub: PubSub) -> AsyncIterator[Invalidation]:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            _raise_if_cancelled()
            with _translated("invalidations"):
                message = await pubsub.get_message(timeout=self._timeout_s)
                if message is None:
                    # Quiet: ask the server to prove it is still there (it answers "pong").
                    if loop.time() - heard > 2 * self._timeout_s:
                        raise RegistryUnavailable("registry invalidations: no answer to PING")
                    await pubsub.ping()
                    continue
            heard = loop.time()
            if message["type"] == "message":
                generation, _, name = _text(message["data"]).partition(" ")
                yield Invalidation(name=name, generation=int(generation))

    async def aclose(self) -> None:
        with _translated("close"):
            await self._client.aclose()
            if self._subscriber is not self._client:
                await self._subscriber.aclose()


def _raise_if_cancelled() -> None:
    """Honour a cancellation that redis-py's reads swallowed (seen when a task was
    cancelled while it subscribed: it went on subscribed, and its router's
    shutdown waited for it for ever); the task's cancel count still shows it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _claim_from(name: str, connection_id: str, reply: list[Any]) -> Claim:
    status = _text(reply[0])
    if status == "taken":
        raise NameTaken(name, NameState(_text(reply[1])))
    if status == "superseded":
        raise LeaseLost(name, connection_id)
    kind = ClaimKind(_text(reply[1]))
    replaced = _text(reply[3]) or None
    return Claim(name=name, generation=int(reply[2]), kind=kind, replaced_connection=replaced)
