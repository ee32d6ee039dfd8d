"""hostmux rows for the side-by-side harness (``peers.py``, the team's shared harness).

Each row starts a fresh hostmux router (plain HTTP front door for the
small-request and bulk figures, or HTTPS) and lets the harness time the tunnel
client: plain OpenSSH ``ssh -R`` or ``hostmux-listener``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import peers
from peers import Ctx, Plan, system

HOST = "bench.localhost"


def _router(ctx: Ctx, *extra: str) -> tuple[peers.Proc, int, int, int, Path, Path]:
    state = ctx.work / "hostmux"
    state.mkdir(exist_ok=True)
    key = state / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    authorized = state / "authorized_keys"
    authorized.write_text(key.with_name("client_key.pub").read_text())
    ssh, http, https = ctx.port("hm-ssh"), ctx.port("hm-http"), ctx.port("hm-https")
    router = ctx.spawn(
        "hostmux-router",
        [
            sys.executable,
            "-m",
            "router",
            "--state-dir",
            state,
            "--authorized-keys-file",
            authorized,
            "--ssh-listen",
            f"127.0.0.1:{ssh}",
            "--http-listen",
            f"127.0.0.1:{http}",
            "--https-listen",
            f"127.0.0.1:{https}",
            "--log-level",
            "warning",
            *extra,
        ],
        wait_for=[ssh, http, https],
    )
    host_key = (state / "ssh_host_key.pub").read_text().split()
    known_hosts = state / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{ssh} {host_key[0]} {host_key[1]}\n")
    return router, ssh, http, https, key, known_hosts


def _openssh(ctx: Ctx, ssh: int, key: Path, known_hosts: Path) -> list[str]:
    return [
        "ssh",
        "-N",
        "-T",
        "-F",
        "/dev/null",
        "-i",
        str(key),
        "-p",
        str(ssh),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "LogLevel=ERROR",
        "-R",
        f"bench:80:127.0.0.1:{ctx.backend_port}",
        "bench@127.0.0.1",
    ]


@system(
    "hostmux-openssh",
    "hostmux router (h11 relay, HTTP front door) + OpenSSH `ssh -N -R bench:80:backend`",
)
def _hostmux_openssh(ctx: Ctx) -> Plan:
    router, ssh, http, _, key, known_hosts = _router(ctx)
    return Plan(
        url=f"http://127.0.0.1:{http}",
        host=HOST,
        router=[router],
        client=_openssh(ctx, ssh, key, known_hosts),
    )


@system("hostmux-listener", "hostmux router (HTTP front door) + `hostmux-listener --name bench`")
def _hostmux_listener(ctx: Ctx) -> Plan:
    router, ssh, http, _, key, known_hosts = _router(ctx)
    client = [
        sys.executable,
        "-m",
        "listener",
        "--router",
        f"127.0.0.1:{ssh}",
        "--name",
        "bench",
        "--target",
        f"127.0.0.1:{ctx.backend_port}",
        "--identity-file",
        str(key),
        "--known-hosts",
        str(known_hosts),
        "--no-check-url",
        "--log-level",
        "warning",
    ]
    return Plan(url=f"http://127.0.0.1:{http}", host=HOST, router=[router], client=client)


@system("hostmux-tls", "hostmux router terminating HTTPS (TLS 1.3, dev CA) + OpenSSH client")
def _hostmux_tls(ctx: Ctx) -> Plan:
    router, ssh, _, https, key, known_hosts = _router(ctx)
    return Plan(
        url=f"https://127.0.0.1:{https}",
        host=HOST,
        router=[router],
        client=_openssh(ctx, ssh, key, known_hosts),
    )


@system(
    "hostmux-wss",
    "hostmux router (HTTP front door) + `hostmux-listener --transport wss` (SSH over WebSocket)",
)
def _hostmux_wss(ctx: Ctx) -> Plan:
    router, ssh, http, https, key, known_hosts = _router(ctx)
    ca = ctx.work / "hostmux" / "tls" / "dev-ca.pem"
    client = [sys.executable, "-m", "listener", "--router", f"127.0.0.1:{ssh}", "--name", "bench",
              "--target", f"127.0.0.1:{ctx.backend_port}", "--identity-file", str(key),
              "--known-hosts", str(known_hosts), "--no-check-url", "--log-level", "warning",
              "--transport", "wss", "--wss-url", f"wss://localhost:{https}/_hostmux/ssh",
              "--router-ca-file", str(ca)]  # fmt: skip
    return Plan(url=f"http://127.0.0.1:{http}", host=HOST, router=[router], client=client)
