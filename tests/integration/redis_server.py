"""A real Debian redis-server on a free loopback port, for the registry's tests.

No persistence (``--save '' --appendonly no``): each server starts empty and
leaves nothing on disk. Ready means it answered PING (through redis-py, with
the server's user and TLS when it has them), awaited with a deadline; it is
stopped by its PID. ``RedisAcl`` starts it with one ACL user and the
``default`` user off; ``RedisTls`` serves TLS only (``rediss://``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

# Reason: redis-server starts in milliseconds; a loaded 2-core machine may take a second.
START_TIMEOUT_S = 10.0
# Reason: how long a stopped server may take to exit before it is killed.
STOP_TIMEOUT_S = 5.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass(frozen=True)
class RedisAcl:
    """One ACL user (``user NAME on >PASSWORD RULES...``); the ``default`` user is off,
    so a client without this user's password gets nothing."""

    user: str
    password: str
    rules: Sequence[str]

    def directives(self) -> list[str]:
        return ["--user", "default", "off", "--user", self.user, "on", f">{self.password}",
                *self.rules]  # fmt: skip


@dataclass(frozen=True)
class RedisTls:
    """TLS only (the plain port is off): the server's certificate and key, and the CA
    a client trusts (given in the URL as ``ssl_ca_certs``)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class RedisServer:
    """One redis-server process; ``url`` is where to reach it.

    ``port`` starts it where an earlier one ran (a restart: it comes back empty).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        acl: RedisAcl | None = None,
        tls: RedisTls | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: run ./dev (it installs Debian's redis-server)")
        self.port = port or _free_port()
        self._tls = tls
        self.url = self.url_as(acl.user, acl.password) if acl else self.url_as()
        command = [binary, "--bind", "127.0.0.1"]
        if tls is None:
            command += ["--port", str(self.port)]
        else:
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            command += ["--tls-cert-file", str(tls.cert_file), "--tls-key-file", str(tls.key_file)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        command += acl.directives() if acl else []
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_ping(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server on port {self.port} did not answer PING in time")
            time.sleep(0.02)  # polling a readiness condition, under the deadline above

    def __repr__(self) -> str:
        return f"<RedisServer port={self.port} pid={self.process.pid}>"

    def url_as(self, user: str = "", password: str = "") -> str:
        """This server's URL as ``user`` with ``password`` (none: anonymous)."""
        scheme = "redis" if self._tls is None else "rediss"
        login = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
        query = "" if self._tls is None else f"?ssl_ca_certs={quote(str(self._tls.ca_file))}"
        return f"{scheme}://{login}127.0.0.1:{self.port}/0{query}"

    def pause(self) -> None:
        """Stalled, not gone: connections stay open and nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
