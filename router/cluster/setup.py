"""The router link's parts, built from the config (``router.server`` calls this).

``link_tls`` checks the cluster certificate files (a bad one is a one-line
ConfigError before anything is created or listens); ``build_link`` makes the three parts: the
``Forwarder`` (sender), its ``LinkPool`` and the ``PeerServer`` (holder).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import keys
from hostmux.config.layered import ConfigError
from hostmux.http1 import Headers
from router.cluster.forwarding import Forwarder
from router.cluster.identity import authorises, link_contexts
from router.cluster.link import LinkPool
from router.cluster.peer_server import PeerServer
from router.config import RouterConfig
from router.registry.model import RouteRegistry
from router.tunnels import TunnelHub

# Reason: as many peers' dials as the front door's backlog; connections are few and long.
_BACKLOG = 1024


@dataclass
class ClusterLink:
    """This router's end of the router-to-router link, both directions."""

    forwarder: Forwarder
    pool: LinkPool
    peers: PeerServer
    server_context: ssl.SSLContext
    handshake_timeout_s: float

    async def start_server(self, host: str, port: int) -> asyncio.Server:
        return await self.peers.serve(
            host, port, self.server_context, handshake_timeout_s=self.handshake_timeout_s,
            backlog=_BACKLOG,
        )  # fmt: skip


def link_tls(config: RouterConfig) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The link's (server, client) TLS contexts; a one-line ConfigError for a bad file."""
    assert config.cluster_ca_file and config.cluster_cert_file and config.cluster_key_file
    try:
        server, client = link_contexts(
            config.cluster_ca_file, config.cluster_cert_file, config.cluster_key_file
        )
        certificate_id = keys.check_router_certificate(
            config.cluster_ca_file, config.cluster_cert_file
        )
    except keys.KeyFileError as error:
        raise ConfigError(f"cluster_cert_file: {error}") from None
    if not authorises(certificate_id, config.router_id):
        raise ConfigError(
            f"cluster_cert_file: it is for {certificate_id!r}, which does not speak for "
            f"router_id {config.router_id!r} (nor {certificate_id}.N)"
        )
    return server, client


def build_link(
    config: RouterConfig,
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    hub: TunnelHub,
    registry: RouteRegistry,
    response_headers: Callable[[Headers], Headers] | None,
) -> ClusterLink:
    server, client = contexts
    pool = LinkPool(client, handshake_timeout_s=config.connect_timeout_s)
    forwarder = Forwarder(
        registry, hub, pool, connect_timeout_s=config.connect_timeout_s,
        response_headers=response_headers,
    )  # fmt: skip
    return ClusterLink(
        forwarder=forwarder,
        pool=pool,
        peers=PeerServer(hub, connect_timeout_s=config.connect_timeout_s),
        server_context=server,
        handshake_timeout_s=config.tls_handshake_timeout_s,
    )
