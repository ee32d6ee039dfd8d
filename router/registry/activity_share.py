"""Activity in a cluster: each name's last activity, the idle names and the lease, in Redis.

Keys, under the registry's prefix (``hostmux:`` by default)::

    PREFIX activity        hash NAME -> Unix time (ms) of its last activity anywhere
                           (each router merges its own: the larger value wins)
    PREFIX activity:idle   hash NAME -> the activity time (ms) an idle event was sent for
    PREFIX activity:lock   the token of the router deciding idleness now (SET NX PX;
                           renewed each round, released by a compare-and-delete)

Like ``redis_store``, this module alone imports redis here; its errors come
out as ``RegistryError``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

import redis.asyncio

from router.registry.acme_share import RENEW, UNLOCK
from router.registry.redis_store import DEFAULT_TIMEOUT_S, _text, _translated

# The larger time wins: a router that saw activity earlier never moves it back.
MERGE = """
for i = 1, #ARGV, 2 do
  local now = redis.call('HGET', KEYS[1], ARGV[i])
  if not now or tonumber(now) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""
# A name no router holds is forgotten, unless activity came since it was read.
FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def _ms(unix_s: float) -> int:
    return round(unix_s * 1000)


class ActivityShare:
    """One router's handle on the cluster's activity keys (its own lease token)."""

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._activity = f"{prefix}activity"
        self._idle = f"{prefix}activity:idle"
        self._lock_key = f"{prefix}activity:lock"
        self._token = secrets.token_hex(16)
        self._merge = client.register_script(MERGE)
        self._forget = client.register_script(FORGET)
        self._unlock = client.register_script(UNLOCK)
        self._renew = client.register_script(RENEW)

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> ActivityShare:
        client = redis.asyncio.from_url(
            url,
            decode_responses=True,
            socket_timeout=DEFAULT_TIMEOUT_S,
            socket_connect_timeout=DEFAULT_TIMEOUT_S,
        )
        return cls(client, prefix=prefix)

    def __repr__(self) -> str:
        return f"<ActivityShare {self._activity}>"

    async def merge(self, last: Mapping[str, float]) -> None:
        """Each name's last activity here, kept where it is newer than the cluster's."""
        args: list[str | int] = []
        for name, when in last.items():
            args += [name, _ms(when)]
        with _translated("activity write"):
            await self._merge(keys=[self._activity], args=args)

    async def read(self, names: Sequence[str]) -> tuple[list[float | None], list[bool]]:
        """For each name: its cluster-wide last activity (None: none written) and
        whether it is idle."""
        if not names:
            return [], []
        with _translated("activity read"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._activity, list(names))
                pipe.hmget(self._idle, list(names))
                values, idle = await pipe.execute()
        last = [None if v is None else int(_text(v)) / 1000 for v in values]
        return last, [v is not None for v in idle]

    async def everything(self) -> tuple[dict[str, float], dict[str, float]]:
        """Every name's last activity, and the idle names with the time they were idle for."""
        with _translated("activity read"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._activity)
                pipe.hgetall(self._idle)
                activity, idle = await pipe.execute()
        return (
            {_text(k): int(_text(v)) / 1000 for k, v in activity.items()},
            {_text(k): int(_text(v)) / 1000 for k, v in idle.items()},
        )

    async def set_idle(self, name: str, last: float) -> None:
        with _translated("activity idle"):
            await self._client.hset(self._idle, name, _ms(last))

    async def clear_idle(self, name: str) -> None:
        with _translated("activity active"):
            await self._client.hdel(self._idle, name)

    async def forget(self, name: str, last: float) -> bool:
        """Drop a name no router holds (unless its activity moved since ``last`` was read)."""
        with _translated("activity forget"):
            dropped = await self._forget(keys=[self._activity, self._idle], args=[name, _ms(last)])
        return bool(dropped)

    async def lock(self, ttl_s: float) -> bool:
        """Take the lease, or renew it if it is ours; False while another router holds it."""
        ttl_ms = round(ttl_s * 1000)
        with _translated("activity lease"):
            if await self._renew(keys=[self._lock_key], args=[self._token, ttl_ms]):
                return True
            taken = await self._client.set(self._lock_key, self._token, nx=True, px=ttl_ms)
        return bool(taken)

    async def unlock(self) -> None:
        with _translated("activity unlock"):
            await self._unlock(keys=[self._lock_key], args=[self._token])

    async def aclose(self) -> None:
        await self._client.aclose()
