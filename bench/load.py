"""The load: wrk for small requests, curl for bulk, a poll for tunnel set-up. All bounded.

- ``run_wrk``: ``wrk -tT -cC -dDs --latency --timeout 5s`` with the row's Host;
  req/s counts only 2xx/3xx responses; errors = non-2xx/3xx + socket errors.
- ``run_curl``: one download of the bulk file; counted only if HTTP 200 and
  exactly the file's size.
- ``wait_for_tunnel``: ``GET /1k`` every 10 ms until the body is exactly
  right, for at most ``SETUP_TIMEOUT_S``.

TLS rows: wrk goes to ``https://127.0.0.1:PORT`` (it sends that as SNI, so
the server's default certificate answers, and wrk does not verify); curl uses
``--resolve`` so SNI and verification are for the real name, against the CA.
"""

from __future__ import annotations

import http.client
import re
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from install import SMALL_BODY, SMALL_NAME
from processes import Proc

SETUP_TIMEOUT_S = 30.0
SETUP_POLL_S = 0.01
# wrk's own per-request timeout (its default, 2 s, counts slow answers as errors).
WRK_TIMEOUT = "5s"


@dataclass(frozen=True)
class Target:
    """Where load goes: base URL and the Host to send (None: the URL's own)."""

    url: str
    host: str | None
    ca_file: Path | None = None  # for curl on https URLs
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (e.g. a session cookie)

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])


def http_get(target: Target, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if target.tls:
        # Set-up timing measures the tunnel, not trust: curl checks the certificate.
        context = ssl._create_unverified_context()
        conn = http.client.HTTPSConnection(
            "127.0.0.1", target.port, timeout=timeout_s, context=context
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=timeout_s)
    try:
        headers = dict(target.headers)
        if target.host:
            headers["Host"] = target.host
        conn.request("GET", "/" + path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for_tunnel(target: Target, client: Proc | None, started: float) -> float:
    """Poll until ``GET /1k`` answers exactly right; returns ms since ``started``."""
    deadline = started + SETUP_TIMEOUT_S
    last = "nothing yet"
    while True:
        try:
            status, body = http_get(target, SMALL_NAME)
            if status == 200 and body == SMALL_BODY:
                return (time.monotonic() - started) * 1e3
            last = f"HTTP {status}, {len(body)} bytes"
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        if client is not None and not client.alive():
            raise RuntimeError(
                f"tunnel client exited ({client.popen.returncode}):\n{client.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"no good response within {SETUP_TIMEOUT_S:g}s (last: {last})")
        time.sleep(SETUP_POLL_S)


def _duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[m.group(2)]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float  # all responses
    ok_rps: float  # 2xx/3xx only
    p50_ms: float | None
    p99_ms: float | None
    non2xx: int
    socket_errors: int
    raw: str

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors


def run_wrk(
    target: Target, *, duration_s: int, threads: int = 2, connections: int = 64
) -> WrkResult:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    cmd += ["--timeout", WRK_TIMEOUT]
    if target.host:
        cmd += ["-H", f"Host: {target.host}"]
    for name, value in target.headers:
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(f"{target.url}/{SMALL_NAME}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    out = proc.stdout + proc.stderr
    m = re.search(r"(\d+) requests in", out)
    requests = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rps = float(m.group(1)) if m else 0.0
    pct: dict[str, float | None] = {}
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", out, re.M)
        pct[p] = _duration_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in m.groups()) if m else 0
    ok_rps = rps * (1 - non2xx / requests) if requests else 0.0
    return WrkResult(requests, rps, ok_rps, pct["50"], pct["99"], non2xx, socket_errors, out)


@dataclass(frozen=True)
class CurlResult:
    status: int
    size: int
    seconds: float
    ok: bool

    @property
    def mb_s(self) -> float | None:
        return self.size / self.seconds / 1e6 if self.ok and self.seconds > 0 else None


def run_curl(target: Target, path: str, expected_bytes: int, *, timeout_s: int) -> CurlResult:
    cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", str(timeout_s)]
    cmd += ["-w", "%{http_code} %{size_download} %{time_total}"]
    for name, value in target.headers:
        cmd += ["-H", f"{name}: {value}"]
    if target.tls and target.host:
        cmd += ["--resolve", f"{target.host}:{target.port}:127.0.0.1"]
        if target.ca_file:
            cmd += ["--cacert", str(target.ca_file)]
        cmd.append(f"https://{target.host}:{target.port}/{path}")
    else:
        if target.host:
            cmd += ["-H", f"Host: {target.host}"]
        cmd.append(f"{target.url}/{path}")
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s + 10, check=False
    ).stdout.split()
    if len(out) != 3:
        return CurlResult(0, 0, 0.0, False)
    status, size, seconds = int(out[0]), int(out[1]), float(out[2])
    return CurlResult(status, size, seconds, status == 200 and size == expected_bytes)
