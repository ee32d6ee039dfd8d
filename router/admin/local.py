"""The admin API of one router without a registry: its own tunnels, blocks in state_dir.

Blocks live in ``STATE_DIR/blocks.json`` (one JSON object, ``{"blocks":
[BLOCK...]}``), rewritten whole through a temporary file and a rename on
every change, so a crash leaves the old list or the new one, never half of
one. A file that cannot be read or parsed stops the router at start (a
ConfigError): starting with no blocks would silently let blocked keys back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostmux.config.layered import ConfigError
from router.activity import Activity
from router.admin.api import TunnelFacts
from router.blocks import BadBlock, Block, Kind
from router.tunnels import Tunnel, TunnelHub


def tunnel_facts(
    tunnel: Tunnel, router_id: str | None, activity: Activity | None = None
) -> TunnelFacts:
    entry = activity.names.get(tunnel.name) if activity is not None else None
    return TunnelFacts(
        name=tunnel.name, owner=tunnel.owner, peer=tunnel.peer, transport=tunnel.transport,
        since=round(tunnel.since, 3), requests=tunnel.requests, bytes_in=tunnel.bytes_in,
        bytes_out=tunnel.bytes_out, websockets_open=len(tunnel.websockets or ()),
        last_activity=round(tunnel.last_activity, 3) or None, router=router_id,
        last_active=round(entry.last_seen(), 3) if entry is not None else None,
        idle=entry.idle if entry is not None else None,
        **_pool_facts(tunnel),
    )  # fmt: skip


def _pool_facts(tunnel: Tunnel) -> dict[str, Any]:
    pool = tunnel.pool
    member = pool.member_of(tunnel) if pool is not None else None
    if member is None:
        return {}
    return {"pool_member": member.member_id, "outstanding": member.outstanding}


class BlockFile:
    """The blocks of a router without a registry, in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"<BlockFile {self.path}>"

    def load(self) -> list[Block]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"blocks file {self.path}: cannot read it: {exc}") from None
        try:
            entries = data["blocks"] if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise BadBlock('expected {"blocks": [...]}')
            return [Block.from_json(entry) for entry in entries]
        except BadBlock as exc:
            raise ConfigError(f"blocks file {self.path}: {exc}") from None

    def save(self, blocks: list[Block]) -> None:
        partial = self.path.with_name(self.path.name + ".new")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"blocks": [b.to_json() for b in blocks]}, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, self.path)


class LocalBackend:
    """``AdminBackend`` for one router: its hub's tunnels, blocks in a ``BlockFile``."""

    def __init__(self, hub: TunnelHub, store: BlockFile, drain: Callable[[], list[str]]) -> None:
        self._hub = hub
        self._store = store
        self._drain = drain
        hub.blocks.replace(store.load())

    def __repr__(self) -> str:
        return f"<LocalBackend {self._store!r} {self._hub.blocks!r}>"

    async def tunnels(self) -> list[dict[str, Any]]:
        activity = self._hub.activity
        return [tunnel_facts(t, None, activity).to_json() for t in self._hub.tunnels()]

    async def kick(self, name: str, reason: str) -> int:
        return self._hub.kick(name, reason)

    async def blocks(self) -> list[Block]:
        return self._hub.blocks.all()

    async def block(self, block: Block) -> int:
        self._hub.blocks.add(block)
        self._store.save(self._hub.blocks.all())
        return self._hub.kick_blocked()

    async def unblock(self, kind: Kind, value: str) -> Block | None:
        removed = self._hub.blocks.remove(kind, value)
        if removed is not None:
            self._store.save(self._hub.blocks.all())
        return removed

    async def drain(self) -> list[str]:
        return self._drain()
