"""The cluster's rows: routers sharing a Redis registry, as ``cluster.py`` measures them.

Each row starts from scratch, like ``rows.ROWS``: its own Debian ``redis-server``
(free loopback port, no persistence), a cluster CA made with the product's
``keys.ClusterCA``, and hostmux routers that all trust one client key.

- ``cluster-local``: router ``a`` with the registry and the router link; the
  OpenSSH tunnel on ``a``; load to ``a``. What a cluster member costs when it
  holds the tunnel itself.
- ``cluster-forwarded``: routers ``a`` and ``b``; the tunnel on ``a``; load to
  ``b``, which forwards every request over the router link. Router CPU is
  both routers'.
- ``workers-2``: one ``hostmux-router --workers 2`` (supervisor + two
  workers behind the same ports); ``hostmux-listener --ha-connections 2`` holds
  the name through both workers, so each serves its own connections locally.

The single router (``rows.ROWS["hostmux-openssh"]``) is the baseline next to them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from processes import Proc, Processes, free_port
from rows import (
    TUNNEL_NAME,
    HostmuxRouter,
    Plan,
    Row,
    RowContext,
    keygen,
    start_hostmux_router,
)

# Reason: readiness of a fresh redis-server is milliseconds; a loaded machine may take seconds.
REDIS_READY_S = 20.0
# Reason: the names' lease; the issue's default (a kill -9 moves a name within it).
LEASE_TTL_S = 15


def start_redis(procs: Processes, work: Path) -> str:
    """Debian's redis-server on a free loopback port, nothing kept on disk; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is missing (apt-get install redis-server)")
    port = free_port()
    (work / "redis").mkdir(parents=True, exist_ok=True)
    procs.spawn(
        "redis-server",
        [
            binary, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", work / "redis",
        ],
        wait_for=[port],
        timeout_s=REDIS_READY_S,
    )  # fmt: skip
    return f"redis://127.0.0.1:{port}/0"


@dataclass(frozen=True)
class Cluster:
    """What a row's routers share: the registry, the cluster CA, the tunnel client's key."""

    work: Path
    redis_url: str
    ca_dir: Path
    client_key: Path

    def router_args(self, router_id: str) -> list[str]:
        """A member's options: registry, id, router link on a free port, its certificate."""
        import keys  # the code under test's (run.py put it on sys.path)

        files = keys.ClusterCA.load(self.ca_dir).issue(router_id)
        return [
            "--registry", self.redis_url, "--router-id", router_id,
            "--lease-ttl-s", str(LEASE_TTL_S),
            "--cluster-listen", f"127.0.0.1:{free_port()}",
            "--cluster-ca-file", str(self.ca_dir / "ca.crt"),
            "--cluster-cert-file", str(files.cert), "--cluster-key-file", str(files.key),
        ]  # fmt: skip


def start_cluster(ctx: RowContext) -> Cluster:
    import keys

    work = ctx.work / "cluster"
    work.mkdir(parents=True, exist_ok=True)
    redis_url = start_redis(ctx.procs, work)
    keys.ClusterCA.init(work / "ca")
    client_key = work / "client_key"
    keygen(client_key)
    return Cluster(work, redis_url, work / "ca", client_key)


def member(
    ctx: RowContext, cluster: Cluster, router_id: str, extra: Sequence[str] = ()
) -> HostmuxRouter:
    return start_hostmux_router(
        ctx.procs, ctx.work / router_id, ctx.bench.tls,
        [*cluster.router_args(router_id), *extra],
        code=ctx.bench.code, log_level=ctx.bench.router_log_level, client_key=cluster.client_key,
    )  # fmt: skip


def _plan(
    load_to: HostmuxRouter, routers: Sequence[Proc], client: list[str], *, tree: bool = False
) -> Plan:
    return Plan(
        url=f"http://127.0.0.1:{load_to.http_port}",
        host=load_to.host(TUNNEL_NAME),
        router=list(routers),
        router_tree=tree,
        client=client,
        logs=[p.log_file for p in routers],
    )


def _cluster_local(ctx: RowContext) -> Plan:
    a = member(ctx, start_cluster(ctx), "a")
    return _plan(a, [a.proc], a.openssh_client(TUNNEL_NAME, ctx.bench.backend_port))


def _cluster_forwarded(ctx: RowContext) -> Plan:
    cluster = start_cluster(ctx)
    a, b = member(ctx, cluster, "a"), member(ctx, cluster, "b")
    return _plan(b, [a.proc, b.proc], a.openssh_client(TUNNEL_NAME, ctx.bench.backend_port))


def workers_router(ctx: RowContext, workers: int) -> HostmuxRouter:
    """``hostmux-router --workers N`` on the registry; the supervisor makes the link's CA."""
    cluster = start_cluster(ctx)
    return start_hostmux_router(
        ctx.procs, ctx.work / "workers", ctx.bench.tls,
        ["--workers", str(workers), "--registry", cluster.redis_url, "--router-id", "w"],
        code=ctx.bench.code, log_level=ctx.bench.router_log_level, client_key=cluster.client_key,
    )  # fmt: skip


def ha_listener(router: HostmuxRouter, backend_port: int, connections: int) -> list[str]:
    """hostmux-listener holding the name through ``connections`` workers of one port."""
    return router.listener_client(TUNNEL_NAME, backend_port, "--ha-connections", str(connections))


def _workers(ctx: RowContext, workers: int) -> Plan:
    router = workers_router(ctx, workers)
    client = ha_listener(router, ctx.bench.backend_port, workers)
    # The supervisor's tree: its workers are the router side.
    return _plan(router, [router.proc], client, tree=True)


CLUSTER_ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row(
            "cluster-local",
            "cluster member, local tunnel",
            "hostmux router `a` with `--registry` (redis-server) and the router link; OpenSSH "
            "`ssh -R` on `a`; load to `a`",
            _cluster_local,
        ),
        Row(
            "cluster-forwarded",
            "cluster, forwarded a <- b",
            "routers `a` and `b` on one registry; OpenSSH `ssh -R` on `a`; load to `b`, which "
            "forwards each request to `a` over the router link (mutual TLS); CPU of both",
            _cluster_forwarded,
        ),
        Row(
            "workers-2",
            "--workers 2 + listener HA",
            "`hostmux-router --workers 2 --registry ...` (supervisor + 2 workers on the same "
            "ports); `hostmux-listener --ha-connections 2` holds the name through both workers",
            lambda ctx: _workers(ctx, 2),
        ),
    )
}
