#!/usr/bin/env python3
"""Side-by-side benchmark of HTTP tunnel routers (ngrok-like) on loopback.

Every system is one row. A row is either a Python function decorated with
@system(...) below, or a [[system]] block in systems.toml next to this file
(or in a file passed with --systems-file). See README.md.

Everything listens on 127.0.0.1 / ::1 only, and every load loop is bounded
in count and time. The script ends only processes it started, by PID.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import getpass
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("PEERS_CACHE", "/tmp/peers-cache"))
IS_ROOT = os.geteuid() == 0

BULK_NAME = "100m"
SMALL_NAME = "1k"
SETUP_TIMEOUT_S = 30.0
LOCALTUNNEL_CLIENT = "localtunnel@2.0.2"


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# installation (idempotent)
# --------------------------------------------------------------------------
APT = {  # command that must exist -> Debian package providing it
    "/usr/sbin/nginx": "nginx",
    "/usr/sbin/sshd": "openssh-server",
    "/usr/bin/ssh": "openssh-client",
    "/usr/bin/ssh-keygen": "openssh-client",
    "/usr/bin/wrk": "wrk",
    "/usr/bin/curl": "curl",
    "ss": "iproute2",
    "gcc": "gcc",
    "node": "nodejs",
    "npm": "npm",
}


def have(cmd: str) -> bool:
    return Path(cmd).exists() if cmd.startswith("/") else shutil.which(cmd) is not None


def ensure_installed() -> None:
    missing = sorted({pkg for cmd, pkg in APT.items() if not have(cmd)})
    if missing:
        if not IS_ROOT:
            sys.exit(f"missing packages {missing}; run as root or install them")
        log(f"apt-get install {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env, timeout=1200)
    npm_dir = CACHE / "npm"
    if not (npm_dir / "node_modules/localtunnel/bin/lt.js").exists():
        log(f"npm install {LOCALTUNNEL_CLIENT} into {npm_dir}")
        npm_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(npm_dir), "--no-audit", "--no-fund",
                        LOCALTUNNEL_CLIENT], check=True, timeout=600)
    shim = CACHE / "loopback_bind.so"
    src = HERE / "loopback_bind.c"
    if not shim.exists() or shim.stat().st_mtime < src.stat().st_mtime:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(src), "-ldl"],
                       check=True, timeout=120)
    make_content()


def make_content() -> None:
    www = CACHE / "www"
    www.mkdir(parents=True, exist_ok=True)
    small = www / SMALL_NAME
    if not small.exists() or small.read_bytes() != SMALL_BODY:
        small.write_bytes(SMALL_BODY)
    bulk = www / BULK_NAME
    if not bulk.exists() or bulk.stat().st_size != BULK_BYTES:
        log(f"writing {BULK_BYTES >> 20} MiB of random data to {bulk}")
        with open(bulk, "wb") as f:
            for _ in range(BULK_BYTES >> 20):
                f.write(os.urandom(1 << 20))


SMALL_BODY = (b"peers-bench 1KiB body\n" * 64)[:1023] + b"\n"
BULK_BYTES = 100 << 20


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------
def _ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                out[int(d)] = int(s[s.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    return out


def descendants(pid: int) -> list[int]:
    """pid and every live process below it."""
    ppid = _ppid_map()
    kids: dict[int, list[int]] = {}
    for p, pp in ppid.items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in ppid:
            out.append(p)
        todo.extend(kids.get(p, []))
    return out


def start_time(pid: int) -> int | None:
    """Kernel start time of pid (guards against PID reuse), None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rindex(")") + 2:].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    """A process this harness started (with its own session), logged to a file."""

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict | None = None,
                 cwd: str | Path | None = None):
        self.name, self.argv = name, [str(a) for a in argv]
        self.logfile = logdir / f"{name}.log"
        self._log = open(self.logfile, "ab")
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True)
        self.pid = self.popen.pid
        self.known: dict[int, int | None] = {self.pid: start_time(self.pid)}

    def tree(self) -> list[int]:
        t = descendants(self.pid) if self.alive() else []
        for p in t:
            if p not in self.known:
                self.known[p] = start_time(p)
        return t

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_kib(self) -> int:
        return sum(rss_kib(p) for p in self.tree())

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        self.tree()  # remember children (nginx workers, sshd sessions) before they are orphaned
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        # children it left behind: only PIDs we saw under it, and only while they are
        # still the same process (same kernel start time), so a reused PID is never hit
        deadline = time.monotonic() + 3
        for p, st in sorted(self.known.items()):
            if p == self.pid or st is None:
                continue
            while start_time(p) == st and time.monotonic() < deadline:
                try:
                    os.kill(p, signal.SIGTERM)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            if start_time(p) == st:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, procs: list[Proc] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited ({p.popen.returncode}):\n{p.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def listeners() -> list[tuple[str, int]]:
    """(local address, pid) of every TCP/UDP listening socket on the machine."""
    out = subprocess.run(["ss", "-H", "-lntup"], capture_output=True, text=True, timeout=10).stdout
    res = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        local = parts[4]
        for pid in re.findall(r"pid=(\d+)", line):
            res.append((local, int(pid)))
    return res


def is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]").split("%")[0]
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1") or host.startswith("::ffff:127.")


# --------------------------------------------------------------------------
# per-instance context handed to system functions
# --------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    """What a system function returns once its router side is up."""
    url: str                                # base URL the load goes to, e.g. http://127.0.0.1:8080
    host: str | None = None                 # Host header (None: the URL's own)
    router: list[Proc] = dataclasses.field(default_factory=list)   # their memory = "router RSS"
    client: list[str] | None = None         # argv of the tunnel client; harness starts it, times setup
    client_env: dict | None = None          # extra environment for the client
    loopback_shim: bool = False             # LD_PRELOAD the bind() shim into the client too
    notes: str = ""


class Ctx:
    def __init__(self, work: Path, backend_port: int, args):
        self.work, self.backend_port, self.args = work, backend_port, args
        self.backend_url = f"http://127.0.0.1:{backend_port}"
        self.procs: list[Proc] = []
        self._ports: dict[str, int] = {}

    # helpers for system definitions -------------------------------------
    def port(self, name: str) -> int:
        if name not in self._ports:
            self._ports[name] = free_port()
        return self._ports[name]

    def env(self, loopback_shim: bool = False, extra: dict | None = None) -> dict:
        e = dict(os.environ)
        if loopback_shim:
            e["LD_PRELOAD"] = str(CACHE / "loopback_bind.so")
            e["NODE_OPTIONS"] = (e.get("NODE_OPTIONS", "") + f" --require {HERE / 'force-loopback.js'}").strip()
        e.update(extra or {})
        return e

    def spawn(self, name: str, argv: list, env: dict | None = None, cwd=None,
              loopback_shim: bool = False, wait_for: int | list[int] | None = None) -> Proc:
        p = Proc(name, argv, self.work, env=self.env(loopback_shim, env), cwd=cwd)
        self.procs.append(p)
        if wait_for is not None:
            for port in ([wait_for] if isinstance(wait_for, int) else wait_for):
                wait_port(port, procs=[p])
        return p

    def nginx(self, name: str, http_block: str, wait_for: int) -> Proc:
        d = self.work / name
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = d / "nginx.conf"
        conf.write_text(f"""
{'user root;' if IS_ROOT else ''}
worker_processes {self.args.nginx_workers};
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  keepalive_requests 100000;
  default_type application/octet-stream;
{http_block}
}}
""")
        return self.spawn(name, ["/usr/sbin/nginx", "-p", d, "-c", conf, "-e", d / "error.log",
                                 "-g", "daemon off;"], wait_for=wait_for)

    def nginx_router(self, port: int, upstream: str, host: str, keepalive: bool = False) -> Proc:
        """nginx routing by Host header: `host` -> upstream, anything else -> 404."""
        ka = "keepalive 64;\n    keepalive_requests 100000;" if keepalive else ""
        hdr = 'proxy_http_version 1.1;\n      proxy_set_header Connection "";' if keepalive else ""
        return self.nginx("router-nginx", f"""
  upstream tunnel {{
    server {upstream};
    {ka}
  }}
  server {{ listen 127.0.0.1:{port} default_server; return 404; }}
  server {{
    listen 127.0.0.1:{port};
    server_name {host};
    location / {{
      proxy_pass http://tunnel;
      {hdr}
      proxy_set_header Host $host;
      proxy_max_temp_file_size 0;
    }}
  }}
""", wait_for=port)

    def sshd(self) -> tuple[Proc, int, Path]:
        """An sshd on 127.0.0.1 with a fresh host key; returns (proc, port, client key)."""
        d = self.work / "sshd"
        d.mkdir(exist_ok=True)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / key], check=True)
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        port = self.port("sshd")
        (d / "sshd_config").write_text(f"""
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
""")
        if IS_ROOT:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        p = self.spawn("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", d / "sshd_config"], wait_for=port)
        return p, port, d / "client_key"

    def ssh_reverse_argv(self, port: int, key: Path, spec: str) -> list[str]:
        return ["ssh", "-N", "-T", "-F", "/dev/null", "-i", key, "-p", port,
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes",
                "-o", "LogLevel=ERROR", "-R", spec, f"{getpass.getuser()}@127.0.0.1"]

    def stop_all(self) -> None:
        for p in reversed(self.procs):  # clients first (started last), then routers
            try:
                p.stop()
            except Exception as e:  # keep stopping the rest
                log(f"stopping {p.name}: {e}")
        self.procs.clear()


# --------------------------------------------------------------------------
# system registry
# --------------------------------------------------------------------------
@dataclasses.dataclass
class System:
    name: str
    description: str
    start: Callable[[Ctx], Plan]
    needs: Callable[[], str | None] = lambda: None  # returns a reason to skip, or None


SYSTEMS: dict[str, System] = {}


def system(name: str, description: str, needs: Callable[[], str | None] | None = None):
    def deco(fn: Callable[[Ctx], Plan]):
        SYSTEMS[name] = System(name, description, fn, needs or (lambda: None))
        return fn
    return deco


TUNNEL_HOST = "bench.tunnel.test"


@system("direct", "load straight to the backend nginx (physical limit)")
def _direct(ctx: Ctx) -> Plan:
    return Plan(url=ctx.backend_url)


@system("nginx-proxy", "nginx as a plain reverse proxy (Host routing, `proxy_pass http://127.0.0.1:PORT`), no tunnel")
def _nginx_proxy(ctx: Ctx) -> Plan:
    port = ctx.port("http")
    ng = ctx.nginx_router(port, f"127.0.0.1:{ctx.backend_port}", TUNNEL_HOST)
    return Plan(url=f"http://127.0.0.1:{port}", host=TUNNEL_HOST, router=[ng])


@system("nginx-proxy-ka", "as nginx-proxy, with upstream keepalive (HTTP/1.1 to the upstream, 64 idle connections)")
def _nginx_proxy_ka(ctx: Ctx) -> Plan:
    port = ctx.port("http")
    ng = ctx.nginx_router(port, f"127.0.0.1:{ctx.backend_port}", TUNNEL_HOST, keepalive=True)
    return Plan(url=f"http://127.0.0.1:{port}", host=TUNNEL_HOST, router=[ng])


def _ssh_row(ctx: Ctx, unix: bool, keepalive: bool) -> Plan:
    sshd, sshport, key = ctx.sshd()
    if unix:
        sock = ctx.work / "tunnel.sock"
        upstream, spec = f"unix:{sock}", f"{sock}:127.0.0.1:{ctx.backend_port}"
    else:
        fwd = ctx.port("fwd")
        upstream, spec = f"127.0.0.1:{fwd}", f"127.0.0.1:{fwd}:127.0.0.1:{ctx.backend_port}"
    port = ctx.port("http")
    ng = ctx.nginx_router(port, upstream, TUNNEL_HOST, keepalive=keepalive)
    return Plan(url=f"http://127.0.0.1:{port}", host=TUNNEL_HOST, router=[ng, sshd],
                client=ctx.ssh_reverse_argv(sshport, key, spec))


@system("ssh-unix", "DIT4C design: nginx Host routing, `proxy_pass http://unix:SOCK` <- sshd <- `ssh -N -R SOCK:backend`")
def _ssh_unix(ctx: Ctx) -> Plan:
    return _ssh_row(ctx, unix=True, keepalive=False)


@system("ssh-unix-ka", "as ssh-unix, with nginx upstream keepalive (ssh channels reused across requests)")
def _ssh_unix_ka(ctx: Ctx) -> Plan:
    return _ssh_row(ctx, unix=True, keepalive=True)


@system("ssh-tcp", "as ssh-unix, but `ssh -R 127.0.0.1:PORT:backend` and `proxy_pass http://127.0.0.1:PORT`")
def _ssh_tcp(ctx: Ctx) -> Plan:
    return _ssh_row(ctx, unix=False, keepalive=False)


def _lt_dir() -> Path:
    return Path(os.environ.get("LT_SERVER_DIR", "/tmp/lt-server"))


def _lt_needs() -> str | None:
    d = _lt_dir()
    if not (d / "bin/server").exists():
        return f"no localtunnel/server checkout at {d} (set LT_SERVER_DIR; see README)"
    if not (d / "node_modules/esm").exists():
        return f"{d}/node_modules missing (its npm dependencies are not installed; see README)"
    return None


@system("localtunnel", "localtunnel/server (Node) + npm `localtunnel` client, Host routing by subdomain",
        needs=_lt_needs)
def _localtunnel(ctx: Ctx) -> Plan:
    d = _lt_dir()
    port = ctx.port("http")
    # its per-client tunnel listener binds all interfaces: the loopback shim pins it to 127.0.0.1
    srv = ctx.spawn("lt-server", ["node", "-r", "esm", "bin/server", "--port", port,
                                  "--address", "127.0.0.1", "--domain", "lt.test",
                                  "--max-sockets", ctx.args.lt_max_sockets],
                    cwd=d, loopback_shim=True, env={"DEBUG": ""}, wait_for=port)
    sub = "benchtunnel"
    lt = CACHE / "npm/node_modules/localtunnel/bin/lt.js"
    return Plan(url=f"http://127.0.0.1:{port}", host=f"{sub}.lt.test", router=[srv],
                client=["node", lt, "--host", f"http://127.0.0.1:{port}", "--port", ctx.backend_port,
                        "--subdomain", sub])


# --------------------------------------------------------------------------
# config-block systems (systems.toml)
# --------------------------------------------------------------------------
def _subst(s: str, ctx: Ctx | None) -> str:
    """Fill {placeholders}; with ctx=None only the run-independent ones."""
    def rep(m: re.Match) -> str:
        kind, _, arg = m.group(1).partition(":")
        if ctx is None and kind in ("port", "backend_port", "work"):
            raise KeyError(f"{{{m.group(1)}}} is not available in needs_cmd")
        if kind == "port":
            return str(ctx.port(arg))
        if kind == "backend_port":
            return str(ctx.backend_port)
        if kind == "work":
            return str(ctx.work)
        if kind == "here":
            return str(HERE)
        if kind == "cache":
            return str(CACHE)
        if kind == "python":
            return sys.executable
        if kind == "env":
            return os.environ.get(arg, "")
        raise KeyError(f"unknown placeholder {{{m.group(1)}}}")
    return re.sub(r"\{([a-z_]+(?::[A-Za-z0-9_]+)?)\}", rep, s)


def load_toml_systems(path: Path) -> None:
    data = tomllib.loads(path.read_text())
    for blk in data.get("system", []):
        _register_block(blk, path)


def _register_block(blk: dict, path: Path) -> None:
    name = blk["name"]

    def needs() -> str | None:
        for var, default in blk.get("env_defaults", {}).items():
            default = _subst(default, None)
            if not os.environ.get(var) and Path(default).exists():
                os.environ[var] = default
        for var in blk.get("needs_env", []):
            v = os.environ.get(var)
            if not v:
                return f"environment variable {var} not set"
            if var.endswith(("_BIN", "_DIR")) and not Path(v).exists():
                return f"{var}={v} does not exist"
        for cmd in blk.get("needs_cmd", []):
            cmd = _subst(cmd, None)
            if subprocess.run(cmd, shell=True, capture_output=True, timeout=60).returncode != 0:
                return f"check failed: {cmd}"
        return None

    def start(ctx: Ctx) -> Plan:
        shim = bool(blk.get("loopback_shim", False))
        routers = []
        cmds = blk.get("router", [])
        for i, cmd in enumerate([cmds] if isinstance(cmds, str) else cmds):
            routers.append(ctx.spawn(f"router{i}", shlex.split(_subst(cmd, ctx)),
                                     cwd=_subst(blk.get("cwd", "{work}"), ctx), loopback_shim=shim))
        for p in blk.get("ready_ports", []):
            wait_port(int(_subst(str(p), ctx)), procs=routers)
        client = blk.get("client")
        return Plan(url=_subst(blk["url"], ctx),
                    host=_subst(blk["host"], ctx) if blk.get("host") else None,
                    router=routers,
                    client=shlex.split(_subst(client, ctx)) if client else None,
                    loopback_shim=shim, notes=blk.get("notes", ""))

    SYSTEMS[name] = System(name, blk.get("description", f"from {path.name}"), start, needs)


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------
def http_get(url: str, path: str, host: str | None, timeout: float = 2.0) -> tuple[int, bytes]:
    u = url.split("://", 1)[1]
    hp = u.split("/", 1)[0]
    h, _, p = hp.rpartition(":")
    if url.startswith("https://"):  # hostmux addition: the TLS rows (load, not trust, is measured)
        import ssl
        conn = http.client.HTTPSConnection(h.strip("[]"), int(p), timeout=timeout,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(h.strip("[]"), int(p), timeout=timeout)
    try:
        conn.request("GET", "/" + path, headers={"Host": host} if host else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def parse_duration_ms(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
    if not m:
        raise ValueError(s)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[u]


def run_wrk(url: str, host: str | None, args, duration: int) -> dict:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency",
           "--timeout", "5s"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    cmd.append(f"{url}/{SMALL_NAME}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    res: dict = {"raw": out}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = parse_duration_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = sum(int(x) for x in m.groups()) if m else 0
    res["errors"] = non2xx + sock
    res["ok_rps"] = res["rps"] * (1 - non2xx / res["requests"]) if res["requests"] else 0.0
    return res


def run_curl(url: str, host: str | None, timeout: int) -> dict:
    cmd = ["curl", "-s", "-k", "-o", "/dev/null", "--max-time", str(timeout),
           "-w", "%{http_code} %{size_download} %{time_total}"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    cmd.append(f"{url}/{BULK_NAME}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10).stdout.split()
    code, size, t = int(out[0]), int(out[1]), float(out[2])
    ok = code == 200 and size == BULK_BYTES
    return {"code": code, "bytes": size, "seconds": t, "ok": ok,
            "mb_s": size / t / 1e6 if ok and t > 0 else None}


def check_loopback(ctx: Ctx) -> None:
    ours = set()
    for p in ctx.procs:
        ours.update(p.tree())
    bad = [(a, pid) for a, pid in listeners() if pid in ours and not is_loopback(a)]
    if bad:
        raise RuntimeError(f"non-loopback listener(s) {bad}: refusing to load this system")


def measure_once(sysdef: System, work: Path, backend_port: int, args) -> dict:
    ctx = Ctx(work, backend_port, args)
    r: dict = {"system": sysdef.name}
    try:
        plan = sysdef.start(ctx)
        check_loopback(ctx)
        client = None
        t0 = time.monotonic()
        if plan.client:
            client = ctx.spawn("client", plan.client, env=plan.client_env, loopback_shim=plan.loopback_shim)
        deadline = t0 + SETUP_TIMEOUT_S
        last = None
        while True:
            try:
                status, body = http_get(plan.url, SMALL_NAME, plan.host)
                if status == 200 and body == SMALL_BODY:
                    break
                last = f"HTTP {status}"
            except OSError as e:
                last = repr(e)
            if client and not client.alive():
                raise RuntimeError(f"client exited ({client.popen.returncode}):\n{client.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no good response within {SETUP_TIMEOUT_S}s (last: {last})")
            time.sleep(0.01)
        r["setup_ms"] = (time.monotonic() - t0) * 1e3 if client else None
        check_loopback(ctx)
        time.sleep(1.0)
        r["rss_idle_kib"] = sum(p.rss_kib() for p in plan.router) if plan.router else None
        if args.warmup:
            run_wrk(plan.url, plan.host, args, args.warmup)
        w = run_wrk(plan.url, plan.host, args, args.duration)
        r.update({k: w[k] for k in ("rps", "ok_rps", "p50_ms", "p99_ms", "errors", "requests")})
        if w["requests"] == 0:
            r["wrk_raw"] = w["raw"][-2000:]
        c = run_curl(plan.url, plan.host, args.bulk_timeout)
        r["mb_s"] = c["mb_s"]
        if not c["ok"]:
            r["bulk_error"] = f"HTTP {c['code']}, {c['bytes']} bytes"
        r["rss_after_kib"] = sum(p.rss_kib() for p in plan.router) if plan.router else None
        for p in ctx.procs:
            if not p.alive():
                r.setdefault("warnings", []).append(f"{p.name} died during the run")
        r["ok"] = True
    except Exception as e:
        r["ok"] = False
        r["error"] = str(e)[:1500]
        for p in ctx.procs:
            if not p.alive() or "exited" in str(e):
                r["error"] += f"\n--- {p.name} log tail:\n{p.log_tail(8)}"
    finally:
        ctx.stop_all()
    return r


def start_backend(work: Path, args) -> tuple[Ctx, int]:
    ctx = Ctx(work, 0, args)
    port = free_port()
    v6 = ""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        v6 = f"listen [::1]:{port};"
    except OSError:
        pass
    ctx.nginx("backend-nginx", f"""
  sendfile on;
  tcp_nopush on;
  server {{
    listen 127.0.0.1:{port};
    {v6}
    root {CACHE / 'www'};
    location / {{ }}
  }}
""", wait_for=port)
    ctx.backend_port = port
    return ctx, port


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=0, unit=""):
    if v is None:
        return "—"
    return f"{v:,.{nd}f}{unit}"


def versions() -> dict:
    def cmd(c):
        try:
            p = subprocess.run(c, shell=True, capture_output=True, text=True, timeout=20)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    v = {"nginx": cmd("nginx -v"), "openssh": cmd("ssh -V"), "wrk": cmd("wrk -v"),
         "curl": cmd("curl --version"), "node": cmd("node --version"),
         "localtunnel client": cmd(f"node -p \"require('{CACHE}/npm/node_modules/localtunnel/package.json').version\""),
         "kernel": platform.release(), "cpus": str(os.cpu_count())}
    d = _lt_dir()
    if (d / ".git").exists() or (d / "package.json").exists():
        v["localtunnel server"] = cmd(f"cd {shlex.quote(str(d))} && (git rev-parse --short HEAD 2>/dev/null || echo no-git)")
        v["localtunnel server esm"] = cmd(f"node -p \"require('{d}/node_modules/esm/package.json').version\"")
    return v


def report(results: list[dict], order: list[str], skipped: dict[str, str], args, started: str) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["system"], []).append(r)
    agg = {}
    for name in order:
        runs = by.get(name, [])
        ok = [r for r in runs if r.get("ok")]
        agg[name] = {
            "n_ok": len(ok), "n": len(runs),
            "rps": med([r["ok_rps"] for r in ok]),
            "p50": med([r["p50_ms"] for r in ok]), "p99": med([r["p99_ms"] for r in ok]),
            "errors": med([r["errors"] for r in ok]),
            "mb_s": med([r["mb_s"] for r in ok]),
            "setup": med([r["setup_ms"] for r in ok]),
            "rss_idle": med([r["rss_idle_kib"] for r in ok]),
            "rss_after": med([r["rss_after_kib"] for r in ok]),
        }
    d = agg.get("direct", {})

    def ratio(name, key):
        a, b = agg[name].get(key), d.get(key)
        return f"{a / b:.2f}×" if a and b else "—"

    L = []
    L.append(f"| system | runs ok | req/s 1 KiB (median) | × direct | p50 ms | p99 ms | errors/run | "
             f"MB/s {BULK_BYTES >> 20} MiB | × direct | tunnel setup ms | router RSS idle MiB | router RSS after load MiB |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in order:
        a = agg[name]
        L.append(f"| {name} | {a['n_ok']}/{a['n']} | {fmt(a['rps'])} | {ratio(name, 'rps')} | "
                 f"{fmt(a['p50'], 2)} | {fmt(a['p99'], 2)} | {fmt(a['errors'])} | {fmt(a['mb_s'])} | "
                 f"{ratio(name, 'mb_s')} | {fmt(a['setup'])} | "
                 f"{fmt(a['rss_idle'] / 1024 if a['rss_idle'] else None, 1)} | "
                 f"{fmt(a['rss_after'] / 1024 if a['rss_after'] else None, 1)} |")
    out = [f"Run started {started}; {os.cpu_count()} CPUs; repeats={args.repeats}; "
           f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency "
           f"(after a {args.warmup}s warm-up); bulk = curl of {BULK_BYTES >> 20} MiB; medians over repeats.", "",
           *L, ""]
    out.append("Systems:")
    for name in order:
        out.append(f"- **{name}**: {SYSTEMS[name].description}")
    for name, why in skipped.items():
        out.append(f"- **{name}**: SKIPPED: {why}")
    fails = [r for r in results if not r.get("ok")]
    if fails:
        out += ["", "Failed runs:"]
        for r in fails:
            out.append(f"- {r['system']}: " + r["error"].replace("\n", " ⏎ ")[:600])
    warns = [r for r in results if r.get("warnings") or r.get("bulk_error")]
    for r in warns:
        out.append(f"- {r['system']}: warnings {r.get('warnings', [])} {r.get('bulk_error', '')}")
    out += ["", "Versions:"] + [f"- {k}: {v}" for k, v in versions().items()]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated system names (default: all available)")
    ap.add_argument("--skip", default="", help="comma-separated system names to leave out")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="wrk seconds (max 60)")
    ap.add_argument("--warmup", type=int, default=2, help="wrk warm-up seconds, 0 for none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--bulk-timeout", type=int, default=120)
    ap.add_argument("--nginx-workers", default="auto")
    ap.add_argument("--lt-max-sockets", type=int, default=10, help="localtunnel --max-sockets (its default 10)")
    ap.add_argument("--systems-file", action="append", default=[], help="extra TOML file(s) of [[system]] blocks")
    ap.add_argument("--out", default=str(HERE / "peers-results.md"), help="markdown table output ('-' = stdout only)")
    ap.add_argument("--json", default=None, help="raw per-run results as JSON (default: next to --out in /tmp)")
    ap.add_argument("--title", default=None, help="heading for the results file")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp work dir (logs, configs)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    args.duration = max(1, min(args.duration, 60))
    args.warmup = max(0, min(args.warmup, 30))
    args.repeats = max(1, min(args.repeats, 10))

    for f in [HERE / "systems.toml", *map(Path, args.systems_file)]:
        if f.exists():
            load_toml_systems(f)
    if args.list:
        for s in SYSTEMS.values():
            why = s.needs()
            print(f"{s.name:24s} {'ok  ' if not why else 'SKIP'} {s.description}" + (f"  [{why}]" if why else ""))
        return
    if not args.no_install:
        ensure_installed()
    else:
        make_content()

    names = args.only.split(",") if args.only else list(SYSTEMS)
    names = [n for n in names if n not in args.skip.split(",")]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        sys.exit(f"unknown system(s) {unknown}; --list shows them")
    skipped = {n: why for n in names if (why := SYSTEMS[n].needs())}
    order = [n for n in names if n not in skipped]
    for n, why in skipped.items():
        log(f"skip {n}: {why}")

    started = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    work = Path(tempfile.mkdtemp(prefix="peers-bench-", dir="/tmp"))
    log(f"work dir {work}")
    results: list[dict] = []
    bctx = None

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        bctx, bport = start_backend(work, args)
        log(f"backend nginx on 127.0.0.1:{bport}")
        for rep in range(args.repeats):
            rot = order[rep % len(order):] + order[:rep % len(order)] if order else []
            for name in rot:
                w = work / f"{name}-r{rep + 1}"
                w.mkdir()
                log(f"repeat {rep + 1}/{args.repeats}: {name}")
                r = measure_once(SYSTEMS[name], w, bport, args)
                r["repeat"] = rep + 1
                results.append(r)
                if r["ok"]:
                    log(f"  {fmt(r['ok_rps'])} req/s  p50 {fmt(r['p50_ms'], 2)} ms  p99 {fmt(r['p99_ms'], 2)} ms  "
                        f"err {r['errors']}  {fmt(r['mb_s'])} MB/s  setup {fmt(r['setup_ms'])} ms  "
                        f"rss {fmt((r['rss_idle_kib'] or 0) / 1024, 1)}->{fmt((r['rss_after_kib'] or 0) / 1024, 1)} MiB")
                else:
                    log(f"  FAILED: {r['error'][:500]}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        if bctx:
            bctx.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    md = report(results, order, skipped, args, started)
    title = args.title or f"# Tunnel router peers: results ({started[:10]})"
    print(md)
    jpath = Path(args.json) if args.json else Path(tempfile.gettempdir()) / f"peers-results-{os.getpid()}.json"
    jpath.write_text(json.dumps(results, indent=1))
    log(f"raw results: {jpath}")
    if args.out != "-":
        Path(args.out).write_text(f"{title}\n\n{md}")
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
