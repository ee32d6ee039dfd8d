"""Wiring the admin API into a router or a workers' supervisor (``admin_listen``).

A router without a registry answers from its own tunnels and keeps its blocks
in ``STATE_DIR/blocks.json`` (``router.admin.local``). With a registry every
router runs a ``ClusterAgent`` and the admin listener answers from the
registry (``router.admin.cluster``), so the listing is cluster-wide and a
kick reaches the router holding the tunnel. With workers the supervisor holds
the one admin listener and its workers none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hostmux.log import fields
from router.admin.api import SECURITY_HEADERS, AdminApi, AdminBackend
from router.admin.http import start_admin_server
from router.admin.local import BlockFile, LocalBackend
from router.admin.token import AdminToken, load_token, read_token
from router.config import RouterConfig, check_admin_listen
from router.tunnels import TunnelHub

if TYPE_CHECKING:
    from router.admin.cluster import ClusterAgent

log = logging.getLogger("hostmux.admin")


def admin_token(config: RouterConfig) -> AdminToken | None:
    """The token, when this process serves ``admin_listen`` (a ConfigError if unusable)."""
    if not config.admin_listen or config.worker_index:
        return None
    token, made = load_token(config.admin_token_path, create=config.admin_token_file is None)
    if made:
        log.info(fields("admin_token_created", path=token.path, mode="0600"))
    return token


def check_files(config: RouterConfig) -> None:
    """``check-config``: the admin token file named in the config and the blocks file,
    read as the router would (a ConfigError names what is wrong), creating nothing."""
    if config.admin_listen and config.admin_token_file is not None:
        read_token(config.admin_token_file)
    if not config.registry:
        block_file(config).load()


def block_file(config: RouterConfig) -> BlockFile:
    return BlockFile(config.state_dir / "blocks.json")


async def start_admin(
    config: RouterConfig, token: AdminToken, backend: AdminBackend
) -> asyncio.Server:
    """Listen on ``admin_listen``; one ``admin_ready`` line says where and which token."""
    where = check_admin_listen(config.admin_listen)
    api = AdminApi(token, backend)
    server = await start_admin_server(where, api.handle, SECURITY_HEADERS)
    sockname = server.sockets[0].getsockname()
    address = sockname if isinstance(sockname, str) else f"{sockname[0]}:{sockname[1]}"
    log.info(fields("admin_ready", admin=address, token=token.token_id))
    return server


def close_admin(config: RouterConfig, server: asyncio.Server) -> None:
    """Stop listening; a unix socket's file goes too (a later start would replace it)."""
    server.close()
    where = check_admin_listen(config.admin_listen)
    if isinstance(where, Path):
        with contextlib.suppress(OSError):
            where.unlink()


def router_backend(
    config: RouterConfig, hub: TunnelHub, drain: Callable[[], list[str]]
) -> AdminBackend:
    """What a router's own admin listener answers from (module docstring)."""
    if config.registry:
        from router.admin.cluster import ClusterBackend, connect

        return ClusterBackend(connect(config.registry), config.registry_prefix, drain)
    return LocalBackend(hub, block_file(config), drain)


def cluster_agent(
    config: RouterConfig, hub: TunnelHub, router_id: Callable[[], str]
) -> ClusterAgent | None:
    """A router's side of the cluster's admin (with a registry), else None."""
    if not config.registry:
        return None
    from router.admin.cluster import ClusterAgent, connect

    return ClusterAgent(connect(config.registry), config.registry_prefix, hub, router_id)
