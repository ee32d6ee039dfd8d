"""Shared fixtures for tests of routers as a cluster: Redis, a cluster CA, linked routers.

The cluster CA and each router's certificate are made by the real command
(``hostmux-keys cluster-ca init|issue``, as ``python -m keys``), and each
router is a real process started with ``--registry``, ``--router-id`` and the
``--cluster-*`` options; its link address is read from its ``router_ready``
line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import redis

import keys

from .conftest import Router, Stack, public_key_of
from .redis_server import RedisServer

# Reason: the CLI makes a key pair and writes two files; a loaded 2-core machine is slow.
KEYS_CLI_TIMEOUT_S = 60.0


def holders(server: RedisServer, name: str) -> dict[str, str]:
    """``router id -> "<lease expiry ms> <connection id>"`` as Redis has it now."""
    client = redis.Redis.from_url(server.url, decode_responses=True)  # its user, its TLS
    try:
        found: dict[str, str] = client.hgetall(f"hostmux:holders:{name}")  # type: ignore[assignment]
        return found
    finally:
        client.close()


def keys_cli(*argv: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "keys", *argv], check=True, timeout=KEYS_CLI_TIMEOUT_S,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


@dataclass
class ClusterCA:
    """A cluster CA directory made by ``hostmux-keys cluster-ca init``."""

    directory: Path

    @classmethod
    def create(cls, directory: Path) -> ClusterCA:
        keys_cli("cluster-ca", "init", str(directory))
        return cls(directory)

    def issue(self, router_id: str) -> tuple[Path, Path]:
        """``hostmux-keys cluster-ca issue DIR ROUTER_ID``: (certificate, key)."""
        keys_cli("cluster-ca", "issue", str(self.directory), router_id)
        return self.directory / f"{router_id}.crt", self.directory / f"{router_id}.key"

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"


@dataclass
class Member:
    """A router of the cluster, and where its link listens."""

    router: Router
    router_id: str
    link_port: int


async def start_member(
    stack: Stack, server: RedisServer, ca: ClusterCA, router_id: str, *extra: str,
    keys: tuple[Path, ...] = (),
) -> Member:  # fmt: skip
    """``hostmux-router --registry ... --router-id ID --cluster-listen 127.0.0.1:0 ...``."""
    cert, key = ca.issue(router_id)
    router = await stack.start_router(
        "--registry", server.url, "--router-id", router_id,
        "--cluster-listen", "127.0.0.1:0", "--cluster-ca-file", str(ca.cert),
        "--cluster-cert-file", str(cert), "--cluster-key-file", str(key), *extra,
    )  # fmt: skip
    for public in keys:
        router.authorize(public_key_of(public))
    ready = router.proc.find(r"event=router_ready .*cluster=127\.0\.0\.1:(\d+)")
    assert ready is not None, "the ready line names the link's address"
    return Member(router, router_id, int(ready[1]))


def link_line(member: Member, name: str, start: int = 0) -> re.Match[str] | None:
    return member.router.proc.find(rf"event=link_stream name={name} ", start)


class Cluster:
    """Routers of one cluster on ``redis_url`` (the router link on, one SSH host key for
    all, as the docs ask), each started, or started again on its ports, by ``start``."""

    def __init__(self, stack: Stack, redis_url: str, tmp: Path, lease_ttl_s: float) -> None:
        self.stack, self.redis_url, self.tmp = stack, redis_url, tmp
        self.lease_ttl_s = lease_ttl_s
        self.ca = keys.ClusterCA.init(tmp / "cluster-ca")
        self.host_key: Path | None = None

    async def start(
        self, router_id: str, key: Path, ports: tuple[int, int, int] = (0, 0, 0)
    ) -> Router:
        state = self.tmp / f"state-{router_id}"
        state.mkdir(exist_ok=True)
        if self.host_key is not None:  # one host key for the whole cluster, as the docs ask
            for suffix in ("", ".pub"):
                copy = Path(f"{self.host_key}{suffix}").read_bytes()  # noqa: ASYNC240 (set-up)
                (state / f"ssh_host_key{suffix}").write_bytes(copy)
            (state / "ssh_host_key").chmod(0o600)
        files = self.ca.issue(router_id)
        router = await self.stack.start_router(
            "--registry", self.redis_url, "--router-id", router_id,
            "--lease-ttl-s", str(self.lease_ttl_s), "--cluster-listen", "127.0.0.1:0",
            "--cluster-ca-file", str(self.ca.ca_file), "--cluster-cert-file", str(files.cert),
            "--cluster-key-file", str(files.key), "--log-level", "info",
            state_dir=state, ports=ports,
        )  # fmt: skip
        router.authorize(public_key_of(key))
        self.host_key = state / "ssh_host_key"
        return router

    def listener_argv(self, routers: dict[str, Router], key: Path, app_port: int) -> list[str]:
        """hostmux-listener's arguments for ``key``: the first of ``routers``, then each
        other one as ``--router``, every host key trusted."""
        known_hosts = self.tmp / "known_hosts"
        known_hosts.write_text(
            "".join(r.known_hosts(self.tmp / f"kh-{rid}").read_text() for rid, r in routers.items())
        )
        first, *others = routers.values()
        argv = self.stack.listener_argv(first, key, app_port)
        argv[argv.index("--known-hosts") + 1] = str(known_hosts)
        for router in others:
            argv += ["--router", f"127.0.0.1:{router.ssh_port}"]
        return argv
