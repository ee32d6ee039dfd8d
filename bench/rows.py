"""The rows of the side-by-side table: how each stack is started from scratch.

Every row starts its router side (nginx, sshd, the hostmux router) and says
how to start its tunnel client; ``run.py`` starts the client itself, to time
the tunnel set-up. All rows route the Host ``bench.bench.test`` (or serve any
Host, for ``direct``) to the same backend nginx, which serves ``/1k`` and the
bulk file. TLS rows use one certificate for ``*.bench.test`` from the
project's development CA (``keys.ensure_dev_tls``), so nginx and hostmux
terminate TLS with the same key type.
"""

from __future__ import annotations

import getpass
import os
import resource
import secrets
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from portal_grant import instance_grant, start_portal
from processes import Proc, Processes, free_port

if TYPE_CHECKING:
    import keys  # run.py imports it (from a snapshot with --rev)


PROJECT = Path(__file__).resolve().parent.parent
DOMAIN = "bench.test"
TUNNEL_NAME = "bench"
HOST = f"{TUNNEL_NAME}.{DOMAIN}"
ANCHOR = "sshd-nginx-ka"
# The auth-helper row's portal user (owner of the instance TUNNEL_NAME), and its password's size.
BENCH_USER = "bench"
BENCH_PASSWORD_BYTES = 24


@dataclass(frozen=True)
class Bench:
    """Facts shared by every row of one run."""

    www: Path
    backend_port: int
    tls: keys.TlsFiles
    nginx_workers: str = "auto"
    code: Path = PROJECT  # the product's packages: the working tree or a revision's snapshot
    # hostmux routers' --log-level: "warning" writes no line per request, "info"
    # the access log (one line per request), as a router in service would.
    router_log_level: str = "warning"


@dataclass
class Plan:
    """What a row's start function returns once its router side is listening."""

    url: str  # base URL the load goes to (paths /1k and the bulk file are appended)
    host: str | None  # Host header, None: the URL's own
    router: list[Proc] = field(default_factory=list)  # their memory is "router RSS"
    # Processes on the router's side whose CPU is counted apart from the router's
    # (the auth helper: "helper CPU µs/req"); their memory counts as router RSS.
    helpers: list[Proc] = field(default_factory=list)
    router_tree: bool = True  # sum the router processes' children too (nginx workers, sshd)
    client: list[str] | None = None  # the tunnel client; run.py starts it and times set-up
    logs: list[Path] = field(default_factory=list)  # router logs scanned for warnings/errors
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    description: str
    start: Callable[[RowContext], Plan]


class RowContext:
    """One start of one row: its work directory, its ports, its processes."""

    def __init__(self, bench: Bench, work: Path, procs: Processes) -> None:
        self.bench = bench
        self.work = work
        self.procs = procs
        self._ports: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<RowContext {self.work.name} ports={self._ports}>"

    def port(self, name: str) -> int:
        if name not in self._ports:
            self._ports[name] = free_port()
        return self._ports[name]

    # -- nginx ----------------------------------------------------------------

    def nginx(self, name: str, http_block: str, port: int) -> tuple[Proc, Path]:
        return start_nginx(self.procs, self.work / name, http_block, port, self.bench.nginx_workers)

    def nginx_router(self, port: int, upstream: str, *, tls: bool) -> tuple[Proc, Path]:
        """nginx routing Host ``HOST`` to ``upstream`` (keepalive 64), anything else -> 404."""
        listen = f"127.0.0.1:{port}" + (" ssl" if tls else "")
        certs = (
            f"ssl_certificate {self.bench.tls.cert};\n"
            f"    ssl_certificate_key {self.bench.tls.key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;"
            if tls
            else ""
        )
        return self.nginx(
            "router-nginx",
            f"""
  upstream tunnel {{
    server {upstream};
    keepalive 64;
    keepalive_requests 100000;
  }}
  server {{
    listen {listen} default_server;
    {certs}
    return 404;
  }}
  server {{
    listen {listen};
    server_name {HOST};
    {certs}
    location / {{
      proxy_pass http://tunnel;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_max_temp_file_size 0;
    }}
  }}
""",
            port,
        )

    # -- OpenSSH ----------------------------------------------------------------

    def sshd(self) -> tuple[Proc, int, Path, Path]:
        """An sshd on 127.0.0.1 (own config, port and host key; public-key login only).

        Returns (proc, port, client key, known_hosts pinning its host key).
        """
        d = self.work / "sshd"
        d.mkdir(exist_ok=True)
        for key in ("host_key", "client_key"):
            keygen(d / key)
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        port = self.port("sshd")
        (d / "sshd_config").write_text(
            f"""
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
GatewayPorts no
X11Forwarding no
PrintMotd no
LogLevel ERROR
"""
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        proc = self.procs.spawn(
            "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", d / "sshd_config"], wait_for=[port]
        )
        known_hosts = d / "known_hosts"
        known_hosts.write_text(pin_line(port, d / "host_key.pub"))
        return proc, port, d / "client_key", known_hosts

    # -- hostmux ----------------------------------------------------------------


def start_nginx(
    procs: Processes, prefix: Path, http_block: str, port: int, workers: str = "auto"
) -> tuple[Proc, Path]:
    """An nginx with its own prefix, config and error log; returns (proc, error log)."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    error_log = prefix / "error.log"
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, error_log, http_block, workers=workers))
    proc = procs.spawn(
        prefix.name,
        ["/usr/sbin/nginx", "-p", prefix, "-c", conf, "-e", error_log, "-g", "daemon off;"],
        wait_for=[port],
    )
    return proc, error_log


def start_backend(procs: Processes, work: Path, www: Path, workers: str = "auto") -> int:
    """The backend nginx every row ends at; returns its port."""
    port = free_port()
    start_nginx(procs, work / "backend-nginx", backend_block(port, www), port, workers)
    return port


def nginx_conf(prefix: Path, error_log: Path, http_block: str, *, workers: str) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    # Enough descriptors for the 10,000 keep-alive connections of the scale benchmark,
    # within what this process may grant (nginx cannot raise the hard limit).
    nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    return f"""
{user}
worker_processes {workers};
worker_rlimit_nofile {nofile};
error_log {error_log} warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  keepalive_requests 100000;
  default_type application/octet-stream;
{http_block}
}}
"""


def backend_block(port: int, www: Path) -> str:
    """The backend every row ends at: static files, sendfile, no access log."""
    return f"""
  sendfile on;
  tcp_nopush on;
  server {{
    listen 127.0.0.1:{port};
    root {www};
    location / {{ }}
  }}
"""


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True, timeout=30
    )


def pin_line(port: int, host_key_pub: Path) -> str:
    """A known_hosts line pinning ``host_key_pub`` for [127.0.0.1]:port."""
    kind, blob = host_key_pub.read_text().split()[:2]
    return f"[127.0.0.1]:{port} {kind} {blob}\n"


def openssh_reverse(port: int, key: Path, known_hosts: Path, spec: str, user: str) -> list[str]:
    """``ssh -N -R spec`` with a pinned host key and nothing from ~/.ssh."""
    return [
        "ssh", "-N", "-T", "-F", "/dev/null", "-i", str(key), "-p", str(port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
        "-R", spec, f"{user}@127.0.0.1",
    ]  # fmt: skip


@dataclass(frozen=True)
class HostmuxRouter:
    proc: Proc
    domain: str
    ssh_port: int
    http_port: int
    https_port: int
    state: Path
    client_key: Path
    known_hosts: Path
    code: Path  # where the product's packages are imported from

    def host(self, name: str) -> str:
        return f"{name}.{self.domain}"

    def openssh_client(self, name: str, backend_port: int) -> list[str]:
        return openssh_reverse(
            self.ssh_port,
            self.client_key,
            self.known_hosts,
            f"{name}:80:127.0.0.1:{backend_port}",
            TUNNEL_NAME,
        )

    def listener_client(self, name: str, backend_port: int, *extra: str) -> list[str]:
        """hostmux-listener as a user runs it: URL self-check on (it never drops the tunnel;
        on ``*.bench.test``, which no resolver knows, it logs one warning and re-checks)."""
        return [
            sys.executable, "-m", "listener",
            "--router", f"127.0.0.1:{self.ssh_port}",
            "--name", name,
            "--target", f"127.0.0.1:{backend_port}",
            "--identity-file", str(self.client_key),
            "--known-hosts", str(self.known_hosts),
            "--log-level", "warning",
            *extra,
        ]  # fmt: skip


def start_hostmux_router(
    procs: Processes,
    work: Path,
    tls: keys.TlsFiles | None,
    extra: Sequence[str] = (),
    *,
    code: Path = PROJECT,
    log_level: str = "warning",
    client_key: Path | None = None,
) -> HostmuxRouter:
    """A fresh hostmux router on loopback: own state dir, one authorized client key.

    With ``tls`` it serves ``*.bench.test`` with that certificate; without, its
    embedded default (``*.localhost``, certificates from its own dev CA). It
    runs from ``code`` (the working tree, or a snapshot of a revision). It logs
    at ``log_level`` (default ``warning``: no line per request), so readiness is
    "all three ports accept", not the ``router_ready`` log line.
    """
    state = work / "hostmux"
    state.mkdir(parents=True, exist_ok=True)
    if client_key is None:  # (a cluster's routers share one client key: ``cluster_rows``)
        client_key = state / "client_key"
        keygen(client_key)
    authorized = state / "authorized_keys"
    authorized.write_text(client_key.with_name("client_key.pub").read_text())
    ssh, http, https = free_port(), free_port(), free_port()
    domain = DOMAIN if tls else "localhost"
    certs = ["--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)] if tls else []
    argv = [
        sys.executable, "-m", "router",
        "--state-dir", state,
        "--authorized-keys-file", authorized,
        "--domain", domain,
        "--ssh-listen", f"127.0.0.1:{ssh}",
        "--https-listen", f"127.0.0.1:{https}",
        "--http-listen", f"127.0.0.1:{http}",
        *certs,
        "--log-level", log_level,
        *extra,
    ]  # fmt: skip
    proc = procs.spawn("hostmux-router", argv, cwd=code, wait_for=[ssh, http, https])
    known_hosts = state / "known_hosts"
    known_hosts.write_text(pin_line(ssh, state / "ssh_host_key.pub"))
    return HostmuxRouter(proc, domain, ssh, http, https, state, client_key, known_hosts, code)


# -- the rows ---------------------------------------------------------------------


def _direct(ctx: RowContext) -> Plan:
    return Plan(url=f"http://127.0.0.1:{ctx.bench.backend_port}", host=None)


def _nginx_proxy_ka(ctx: RowContext) -> Plan:
    port = ctx.port("http")
    nginx, error_log = ctx.nginx_router(port, f"127.0.0.1:{ctx.bench.backend_port}", tls=False)
    return Plan(url=f"http://127.0.0.1:{port}", host=HOST, router=[nginx], logs=[error_log])


def _sshd_nginx(ctx: RowContext, *, tls: bool) -> Plan:
    sshd, ssh_port, key, known_hosts = ctx.sshd()
    sock = ctx.work / "tunnel.sock"
    port = ctx.port("front")
    nginx, error_log = ctx.nginx_router(port, f"unix:{sock}", tls=tls)
    client = openssh_reverse(
        ssh_port,
        key,
        known_hosts,
        f"{sock}:127.0.0.1:{ctx.bench.backend_port}",
        getpass.getuser(),
    )
    scheme = "https" if tls else "http"
    return Plan(
        url=f"{scheme}://127.0.0.1:{port}",
        host=HOST,
        router=[nginx, sshd],
        client=client,
        logs=[error_log, sshd.log_file],
    )


def _start_router(
    ctx: RowContext, tls: keys.TlsFiles | None, extra: Sequence[str] = ()
) -> HostmuxRouter:
    return start_hostmux_router(
        ctx.procs, ctx.work, tls, extra, code=ctx.bench.code,
        log_level=ctx.bench.router_log_level,
    )  # fmt: skip


def _hostmux_plan(
    router: HostmuxRouter,
    client: list[str],
    *,
    tls: bool = False,
    helpers: Sequence[Proc] = (),
    headers: tuple[tuple[str, str], ...] = (),
) -> Plan:
    """Load through ``router``'s front door to the tunnel ``client`` opens; ``helpers``
    (the auth helper) count as router side for memory, apart for CPU."""
    scheme, port = ("https", router.https_port) if tls else ("http", router.http_port)
    return Plan(
        url=f"{scheme}://127.0.0.1:{port}",
        host=router.host(TUNNEL_NAME),
        router=[router.proc],
        helpers=list(helpers),
        router_tree=False,
        client=client,
        logs=[router.proc.log_file, *(helper.log_file for helper in helpers)],
        headers=headers,
    )


def _hostmux(ctx: RowContext, *, client: str, tls: bool, extra: Sequence[str] = ()) -> Plan:
    router = _start_router(ctx, ctx.bench.tls, extra)
    backend = ctx.bench.backend_port
    if client == "listener":
        argv = router.listener_client(TUNNEL_NAME, backend)
    else:
        argv = router.openssh_client(TUNNEL_NAME, backend)
    return _hostmux_plan(router, argv, tls=tls)


def _hostmux_wss(ctx: RowContext) -> Plan:
    router = _start_router(ctx, None)
    argv = router.listener_client(
        TUNNEL_NAME, ctx.bench.backend_port,
        "--transport", "wss",
        "--wss-url", f"wss://localhost:{router.https_port}/_hostmux/ssh",
        "--router-ca-file", str(router.state / "tls" / "dev-ca.pem"),
    )  # fmt: skip
    return _hostmux_plan(router, argv)


def _hostmux_authhelper(ctx: RowContext) -> Plan:
    """The whole chain of a portal instance: router -> OpenSSH -> auth helper -> app,
    with the session cookie a login gives: sealed with the helper's key around a
    grant the example portal issued, so the helper's access re-checks (on the
    first request, then every ``access_recheck_s``, the default) ask that portal."""
    # Imported here, like keys in run.py: from the code under test (a snapshot with --rev).
    from authhelper._session import SESSION_COOKIE, CookieSealer, new_cookie_key

    router = _start_router(ctx, None)
    password = secrets.token_urlsafe(BENCH_PASSWORD_BYTES)
    portal = start_portal(
        ctx.procs, ctx.work / "portal", ctx.port("portal"), ctx.bench.code,
        user=BENCH_USER, password=password, router_domain=router.domain,
    )  # fmt: skip
    instance_url = f"http://{router.host(TUNNEL_NAME)}:{router.http_port}"
    grant = instance_grant(portal, TUNNEL_NAME, instance_url, user=BENCH_USER, password=password)
    key = new_cookie_key()
    keys_file = ctx.work / "cookie-keys"
    keys_file.write_text(key + "\n")
    keys_file.chmod(0o600)
    helper_port = ctx.port("helper")
    helper = ctx.procs.spawn(
        "hostmux-authhelper",
        [
            sys.executable, "-m", "authhelper", "--listen", f"127.0.0.1:{helper_port}",
            "--app", f"127.0.0.1:{ctx.bench.backend_port}", "--instance-id", TUNNEL_NAME,
            "--portal-url", portal.url, "--cookie-keys-file", str(keys_file),
            "--log-level", ctx.bench.router_log_level,
        ],
        cwd=ctx.bench.code,
        wait_for=[helper_port],
    )  # fmt: skip
    sealer = CookieSealer([key], TUNNEL_NAME, session_lifetime_s=8 * 3600)
    session, _ = sealer.seal_session(BENCH_USER, grant=grant)
    plan = _hostmux_plan(
        router,
        router.openssh_client(TUNNEL_NAME, helper_port),
        helpers=[helper],
        headers=(("Cookie", f"{SESSION_COOKIE}={session}"),),
    )
    # The portal's log is scanned like the others; its CPU and memory are not the router side's.
    plan.logs.append(portal.proc.log_file)
    return plan


def _pipe_ceiling(ctx: RowContext) -> Plan:
    """No HTTP at all: ``pipe_router.py`` pipes each connection into a channel."""
    state = ctx.work / "pipe"
    state.mkdir(exist_ok=True)
    host_key, client_key = state / "host_key", state / "client_key"
    keygen(host_key)
    keygen(client_key)
    authorized = state / "authorized_keys"
    authorized.write_text(client_key.with_name("client_key.pub").read_text())
    ssh, http = ctx.port("pipe-ssh"), ctx.port("pipe-http")
    router = ctx.procs.spawn(
        "pipe-router",
        [
            sys.executable, PROJECT / "bench" / "pipe_router.py",
            "--ssh-port", ssh, "--http-port", http,
            "--host-key", host_key, "--authorized-keys", authorized,
        ],
        cwd=ctx.bench.code,
        wait_for=[ssh, http],
    )  # fmt: skip
    known_hosts = state / "known_hosts"
    known_hosts.write_text(pin_line(ssh, host_key.with_name("host_key.pub")))
    client = openssh_reverse(
        ssh, client_key, known_hosts, f"{TUNNEL_NAME}:80:127.0.0.1:{ctx.bench.backend_port}",
        TUNNEL_NAME,
    )  # fmt: skip
    return Plan(
        url=f"http://127.0.0.1:{http}", host=HOST, router=[router], router_tree=False,
        client=client, logs=[router.log_file],
    )  # fmt: skip


ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row(
            "direct",
            "direct (backend nginx)",
            "wrk/curl straight to the backend nginx: the physical limit",
            _direct,
        ),
        Row(
            "nginx-proxy-ka",
            "nginx proxy, keepalive",
            "nginx reverse proxy routing the Host to the backend, upstream keepalive 64, no tunnel",
            _nginx_proxy_ka,
        ),
        Row(
            ANCHOR,
            "sshd + nginx, keepalive",
            "DIT4C design: sshd (own config/port/host key, pubkey auth) + "
            "`ssh -N -R SOCK:backend`; nginx routes the Host to `unix:SOCK` with upstream "
            "keepalive 64 (ssh channels reused)",
            lambda ctx: _sshd_nginx(ctx, tls=False),
        ),
        Row(
            "hostmux-openssh",
            "hostmux + OpenSSH",
            "hostmux router, plain HTTP front door, + OpenSSH `ssh -N -R bench:80:backend`",
            lambda ctx: _hostmux(ctx, client="openssh", tls=False),
        ),
        Row(
            "hostmux-openssh-metrics",
            "hostmux + OpenSSH, metrics on",
            "as hostmux + OpenSSH, with `--metrics-listen` (the per-request cost of /metrics; "
            "not scraped during the load: a scrape every 15 s is not a per-request cost)",
            lambda ctx: _hostmux(
                ctx,
                client="openssh",
                tls=False,
                extra=("--metrics-listen", f"127.0.0.1:{ctx.port('metrics')}"),
            ),
        ),
        Row(
            "hostmux-listener",
            "hostmux + listener",
            "hostmux router, plain HTTP front door, + `hostmux-listener --name bench`",
            lambda ctx: _hostmux(ctx, client="listener", tls=False),
        ),
        Row(
            "hostmux-tls",
            "hostmux TLS + OpenSSH",
            "hostmux router terminating HTTPS (`--tls-cert-file` *.bench.test) + OpenSSH `ssh -R`",
            lambda ctx: _hostmux(ctx, client="openssh", tls=True),
        ),
        Row(
            "sshd-nginx-tls",
            "nginx TLS + sshd, keepalive",
            "as sshd + nginx, keepalive, with nginx terminating HTTPS "
            "(same *.bench.test certificate)",
            lambda ctx: _sshd_nginx(ctx, tls=True),
        ),
        Row(
            "hostmux-wss",
            "hostmux + listener over WSS",
            "hostmux router (its default *.localhost, dev CA), plain HTTP front door, + "
            "`hostmux-listener --transport wss` (SSH over WebSocket through the HTTPS port)",
            _hostmux_wss,
        ),
        Row(
            "hostmux-authhelper",
            "hostmux + OpenSSH + auth helper",
            "hostmux router, plain HTTP front door, + OpenSSH `ssh -R` to `hostmux-authhelper` "
            "in front of the backend, requests carrying a session cookie from a real login "
            "(a grant from the example portal, which the helper re-checks access with every "
            "access_recheck_s); router and helper memory counted together, their CPU apart "
            "(router CPU, helper CPU), the portal's not",
            _hostmux_authhelper,
        ),
        Row(
            "pipe-ceiling",
            "ceiling: asyncssh pipe, no HTTP",
            "not a product: `bench/pipe_router.py` holds the forward as the router does "
            "(asyncssh, same ciphers, window, coalesced writes, uvloop) but pipes each "
            "connection into a channel with no HTTP work at all, + OpenSSH `ssh -R`: "
            "the most any Python router on asyncssh can reach here",
            _pipe_ceiling,
        ),
    )
}
