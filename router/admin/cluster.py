"""The admin API with a registry: tunnels cluster-wide, kicks and blocks through Redis.

Why this way: the route registry knows which router holds a name but not a
tunnel's peer or counters, and routers (or one supervisor's workers) may be
on several machines; the Redis they all reach is the one channel they share.

Keys and channel (under ``registry_prefix``)::

    admin:tunnels:ROUTER_ID   JSON list of that router's tunnels (TunnelFacts),
                              rewritten within SNAPSHOT_DELAY_S of a tunnel
                              coming or going and every SNAPSHOT_INTERVAL_S,
                              expiring after SNAPSHOT_TTL_S (a dead router's
                              list disappears by itself)
    admin:blocks              hash "KIND:VALUE" -> JSON block
    admin                     channel: {"kick": NAME, "reason": R} or {"blocks": 1}

Rules:

1. Every router with a registry runs a ``ClusterAgent``: it writes its
   snapshot, listens on the channel (a kick closes its tunnel for the name,
   if it holds one: only the holder acts), and reloads the blocks when told
   and every SNAPSHOT_INTERVAL_S (a missed message costs at most that long),
   closing the tunnels a block matches.
2. The admin listener (a supervisor's, or a router's own) answers from the
   snapshots and writes blocks to the hash, then publishes; listings are at
   most SNAPSHOT_INTERVAL_S old for counters, SNAPSHOT_DELAY_S for tunnels.
3. A claim checks the router's copy of the blocks (no extra round trip); until
   the first read of them succeeded, claims are refused ("try again"): a
   router starting must not let a blocked key in.
4. An unreachable Redis is logged and retried each interval; the router
   keeps serving with the blocks it last read. An admin call answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio
import redis.exceptions

from hostmux.log import describe, fields
from router.admin.api import AdminUnavailable
from router.admin.local import tunnel_facts
from router.blocks import BadBlock, Block, Kind
from router.registry.redis_store import refused_credentials
from router.tunnels import TunnelHub

log = logging.getLogger("hostmux.admin")

# Reason: counters in the listing are at most this old; one small write per router.
SNAPSHOT_INTERVAL_S = 2.0
# Reason: tunnel churn is written at most this often (each write is the whole list).
SNAPSHOT_DELAY_S = 0.2
# Reason: three missed rounds: the router is gone, its tunnels vanish from the listing.
SNAPSHOT_TTL_S = 3 * SNAPSHOT_INTERVAL_S
# Reason: as the registry's: a Redis on the LAN answers in milliseconds.
TIMEOUT_S = 2.0


def connect(url: str) -> redis.asyncio.Redis:
    """A client for the admin keys (lazy: connects on first use)."""
    return redis.asyncio.from_url(
        url, decode_responses=True, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
    )


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.tunnels = f"{prefix}admin:tunnels:"
        self.blocks = f"{prefix}admin:blocks"
        self.channel = f"{prefix}admin"


async def _read_blocks(client: redis.asyncio.Redis, keys: _Keys) -> list[Block]:
    blocks = []
    for field, raw in (await client.hgetall(keys.blocks)).items():
        try:
            blocks.append(Block.from_json(json.loads(raw)))
        except (ValueError, BadBlock) as exc:
            log.error(fields("admin_bad_block", field=field, error=describe(exc)))
    return blocks


class ClusterAgent:
    """A router's side (rule 1): its snapshot, the channel, its copy of the blocks."""

    def __init__(
        self, client: redis.asyncio.Redis, prefix: str, hub: TunnelHub, router_id: Callable[[], str]
    ) -> None:
        self._client = client
        self._keys = _Keys(prefix)
        self._hub = hub
        self._router_id = router_id
        self._changed = asyncio.Event()
        hub.observers.append(lambda *_: self._changed.set())
        hub.blocks_known = False  # claims are refused until the first read (rule 3)

    def __repr__(self) -> str:
        return f"<ClusterAgent {self._keys.channel}>"

    async def run(self) -> None:
        """Until cancelled; errors are logged and retried (rule 4)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._snapshots())
                tg.create_task(self._listen())
        finally:
            with contextlib.suppress(Exception):  # best effort: the process is stopping
                await self._client.aclose()

    async def _snapshots(self) -> None:
        while True:
            try:
                await self.reload_blocks()
                await self._write_snapshot()
            except (redis.exceptions.RedisError, OSError) as exc:
                self._unread(exc)
                log.warning(fields("admin_registry_unavailable", error=describe(exc)))
            try:  # the next round: a tunnel came or went, or the interval passed
                async with asyncio.timeout(SNAPSHOT_INTERVAL_S):
                    await self._changed.wait()
                await asyncio.sleep(SNAPSHOT_DELAY_S)  # a rate limit, not a synchronisation
            except TimeoutError:
                pass
            self._changed.clear()

    async def _write_snapshot(self) -> None:
        router_id = self._router_id()
        activity = self._hub.activity
        tunnels = [tunnel_facts(t, router_id, activity).to_json() for t in self._hub.tunnels()]
        key = self._keys.tunnels + router_id
        await self._client.set(key, json.dumps(tunnels), px=round(SNAPSHOT_TTL_S * 1000))

    async def first_read(self) -> None:
        """Read the blocks once before the router says it is ready (a starting router
        must not let a blocked key in); an unreachable Redis is logged, and claims wait
        for the agent's next read."""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await self.reload_blocks()
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            self._unread(exc)
            log.warning(fields("admin_blocks_unread", error=describe(exc) or "timeout"))

    def _unread(self, exc: BaseException) -> None:
        """Note why the blocks could not be read when it is the operator's to fix (claims
        are refused with it; anything else is retried and may pass)."""
        if not self._hub.blocks_known and refused_credentials(exc):
            self._hub.blocks_unreadable = "the route registry refused the router's credentials"

    async def reload_blocks(self) -> None:
        self._hub.blocks.replace(await _read_blocks(self._client, self._keys))
        self._hub.blocks_known = True
        self._hub.blocks_unreadable = None
        self._hub.kick_blocked()

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._client.pubsub()
                try:
                    await pubsub.subscribe(self._keys.channel)
                    await self.reload_blocks()  # what changed before we listened
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=SNAPSHOT_INTERVAL_S
                        )
                        if message is not None and message["type"] == "message":
                            await self._on_message(message["data"])
                finally:
                    await pubsub.aclose()
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning(fields("admin_channel_lost", error=describe(exc)))
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)  # retry period, not a synchronisation

    async def _on_message(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if isinstance(name := message.get("kick"), str):
            reason = message.get("reason")
            self._hub.kick(name, reason if isinstance(reason, str) else "kicked")
        if message.get("blocks"):
            await self.reload_blocks()


class ClusterBackend:
    """``AdminBackend`` from the registry (rule 2)."""

    def __init__(
        self, client: redis.asyncio.Redis, prefix: str, drain: Callable[[], list[str]]
    ) -> None:
        self._client = client
        self._keys = _Keys(prefix)
        self._drain = drain

    def __repr__(self) -> str:
        return f"<ClusterBackend {self._keys.channel}>"

    async def tunnels(self) -> list[dict[str, Any]]:
        with _unavailable():
            keys = [k async for k in self._client.scan_iter(match=self._keys.tunnels + "*")]
            lists = await self._client.mget(keys) if keys else []
        tunnels: list[dict[str, Any]] = []
        for raw in lists:
            if raw is not None:
                tunnels.extend(json.loads(raw))
        return tunnels

    async def kick(self, name: str, reason: str) -> int:
        held = sum(1 for t in await self.tunnels() if t["name"] == name)
        if held:
            await self._publish({"kick": name, "reason": reason})
        return held

    async def blocks(self) -> list[Block]:
        with _unavailable():
            blocks = await _read_blocks(self._client, self._keys)
        return sorted(blocks, key=lambda b: b.at)

    async def block(self, block: Block) -> int:
        field = f"{block.kind}:{block.value}"
        with _unavailable():
            await self._client.hset(self._keys.blocks, field, json.dumps(block.to_json()))
        await self._publish({"blocks": 1})
        key = "owner" if block.kind == "key" else "name"
        return sum(1 for t in await self.tunnels() if t[key] == block.value)

    async def unblock(self, kind: Kind, value: str) -> Block | None:
        field = f"{kind}:{value}"
        with _unavailable():
            raw = await self._client.hget(self._keys.blocks, field)
            if raw is None or not await self._client.hdel(self._keys.blocks, field):
                return None
        await self._publish({"blocks": 1})
        try:
            return Block.from_json(json.loads(raw))
        except (ValueError, BadBlock):
            return Block(kind, value)

    async def drain(self) -> list[str]:
        return self._drain()

    async def _publish(self, message: dict[str, Any]) -> None:
        with _unavailable():
            await self._client.publish(self._keys.channel, json.dumps(message))


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Redis's errors become AdminUnavailable (answered 503, rule 4)."""
    try:
        yield
    except (redis.exceptions.RedisError, OSError) as exc:
        raise AdminUnavailable(f"the registry cannot be reached: {describe(exc)}") from exc
