"""Real processes on loopback: the router, sample apps, OpenSSH and hostmux-listener.

Everything is started by trio from a per-test nursery and ended by PID when
the test ends (trio's ``run_process`` terminates what it started on
cancellation). Nothing waits by sleeping: readiness is a log line or a printed
URL, awaited with a deadline.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

import keys

from .redis_server import RedisServer

# Generous: a 2-core CI machine runs a router, OpenSSH and an app per test.
START_TIMEOUT_S = 30.0

ROOT = Path(__file__).resolve().parents[2]


class LoggedProcess:
    """A child process whose stdout and stderr lines are collected as they come."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"<LoggedProcess {self.name} pid={self.process.pid}>"

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        while chunk := await stream.receive_some(65536):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                self.lines.append(raw.decode("utf-8", "replace"))
            self._changed.set()
            self._changed = trio.Event()
        if buffer:
            self.lines.append(buffer.decode("utf-8", "replace"))
        self._changed.set()

    def find(self, pattern: str, start: int = 0) -> re.Match[str] | None:
        regex = re.compile(pattern)
        for line in self.lines[start:]:
            if match := regex.search(line):
                return match
        return None

    async def wait_for(
        self, pattern: str, *, start: int = 0, timeout_s: float = START_TIMEOUT_S
    ) -> re.Match[str]:
        """The first line (from index ``start``) matching ``pattern``; fails after a deadline."""
        with trio.move_on_after(timeout_s):
            while True:
                if match := self.find(pattern, start):
                    return match
                if self.process.returncode is not None and self._changed.is_set():
                    break
                await self._changed.wait()
        tail = "\n".join(self.lines[-30:])
        raise AssertionError(
            f"{self.name}: no line matching {pattern!r} in time; last lines:\n{tail}"
        )

    async def wait_exit(self) -> int:
        with trio.fail_after(START_TIMEOUT_S):
            return await self.process.wait()

    async def stop(self) -> int:
        """SIGTERM, then the exit code (within the deadline)."""
        if self.process.returncode is None:
            self.process.terminate()
        return await self.wait_exit()


@dataclass
class Router:
    proc: LoggedProcess
    state_dir: Path
    authorized_keys: Path
    ssh_port: int
    https_port: int
    http_port: int
    host_key_fingerprint: str
    ca_cert: Path
    domain: str = "localhost"

    def url(self, name: str) -> str:
        return f"https://{name}.{self.domain}:{self.https_port}"

    def authorize(self, public_key: Path, options: str = "") -> None:
        line = public_key.read_text().strip()
        with self.authorized_keys.open("a") as fh:
            fh.write(f"{options} {line}\n" if options else line + "\n")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=os.fspath(self.ca_cert))

    def known_hosts(self, path: Path) -> Path:
        public = (self.state_dir / "ssh_host_key.pub").read_text().split()
        path.write_text(f"[127.0.0.1]:{self.ssh_port} {public[0]} {public[1]}\n")
        return path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=self.ssl_context(), timeout=60.0)

    def request(
        self,
        client: httpx.AsyncClient,
        method: str,
        name: str,
        path: str = "/",
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        tls: bool = True,
    ) -> httpx.Request:
        """A request for ``path`` on NAME.DOMAIN sent to loopback (no DNS needed), SNI set."""
        host = f"{name}.{self.domain}"
        port = self.https_port if tls else self.http_port
        return client.build_request(
            method,
            f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}",
            headers={"host": f"{host}:{port}", **(headers or {})},
            extensions={"sni_hostname": host} if tls else {},
            content=content,
        )

    async def get(
        self, name: str, path: str = "/", *, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        async with self.client() as client:
            return await client.send(self.request(client, "GET", name, path, headers=headers))

    async def open_tls(self, name: str) -> trio.SSLStream[trio.SocketStream]:
        """A raw TLS stream to the front door with SNI ``NAME.DOMAIN``."""
        tcp = await trio.open_tcp_stream("127.0.0.1", self.https_port)
        stream = trio.SSLStream(tcp, self.ssl_context(), server_hostname=f"{name}.{self.domain}")
        await stream.do_handshake()
        return stream


@dataclass
class App:
    proc: LoggedProcess
    port: int


@dataclass
class Stack:
    """Starts the pieces of a test's world inside the test's nursery."""

    nursery: trio.Nursery
    tmp: Path
    processes: list[LoggedProcess] = field(default_factory=list)
    _counter: int = 0

    def path(self, name: str) -> Path:
        self._counter += 1
        return self.tmp / f"{self._counter:02d}-{name}"

    async def spawn(
        self, name: str, argv: Sequence[str], *, stdin: int = subprocess.DEVNULL, **options: object
    ) -> LoggedProcess:
        async def deliver_cancel(process: trio.Process) -> None:
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
                return
            process.kill()

        process: trio.Process = await self.nursery.start(
            partial(
                trio.run_process, list(argv), check=False, stdin=stdin,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, deliver_cancel=deliver_cancel,
                **options,
            )
        )  # fmt: skip
        logged = LoggedProcess(name, process)
        assert process.stdout is not None
        self.nursery.start_soon(logged.pump, process.stdout)
        self.processes.append(logged)
        return logged

    def new_key(self, label: str) -> Path:
        path = self.path(f"key-{label}")
        keys.write_keypair(keys.generate_keypair(comment=label), path)
        return path

    async def start_router(
        self,
        *extra: str,
        state_dir: Path | None = None,
        ports: tuple[int, int, int] = (0, 0, 0),
        preexec_fn: Callable[[], None] | None = None,
    ) -> Router:
        """The router as a process; ``preexec_fn`` runs in the child before it starts."""
        state_dir = state_dir or self.path("router-state")
        state_dir.mkdir(exist_ok=True)
        authorized = state_dir / "authorized_keys"
        authorized.touch()
        ssh, https, http = ports
        proc = await self.spawn(
            "router",
            [
                sys.executable, "-m", "router", "--state-dir", str(state_dir),
                "--authorized-keys-file", str(authorized),
                "--ssh-listen", f"127.0.0.1:{ssh}", "--https-listen", f"127.0.0.1:{https}",
                "--http-listen", f"127.0.0.1:{http}", *extra,
            ],
            preexec_fn=preexec_fn,
        )  # fmt: skip
        ready = await proc.wait_for(
            r"event=router_ready .*ssh=127\.0\.0\.1:(\d+) https=127\.0\.0\.1:(\d+) "
            r"http=127\.0\.0\.1:(\d+) host_key=(\S+)(?: ca=(\S+))?"
        )
        return Router(
            proc=proc, state_dir=state_dir, authorized_keys=authorized,
            ssh_port=int(ready[1]), https_port=int(ready[2]), http_port=int(ready[3]),
            host_key_fingerprint=ready[4], ca_cert=Path(ready[5] or os.devnull),
        )  # fmt: skip

    async def start_app(self) -> App:
        proc = await self.spawn(
            "sample-app", [sys.executable, "-m", "examples.sample_app", "--port", "0"]
        )
        match = await proc.wait_for(r"sample-app listening on http://127\.0\.0\.1:(\d+)")
        return App(proc=proc, port=int(match[1]))

    def ssh_argv(self, router: Router, key: Path, *args: str) -> list[str]:
        known_hosts = router.known_hosts(self.path("known_hosts"))
        return [
            "ssh", "-F", "none", "-p", str(router.ssh_port), "-i", str(key),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes",
            "-o", "ServerAliveInterval=15", *args,
        ]  # fmt: skip

    async def openssh_tunnel(
        self, router: Router, key: Path, name: str, port: int, *, wait: bool = True
    ) -> LoggedProcess:
        """``ssh -N -R NAME:80:127.0.0.1:PORT``, up once the router logs the tunnel."""
        start = len(router.proc.lines)
        proc = await self.spawn(
            f"ssh-{name}",
            self.ssh_argv(
                router, key, "-N", "-R", f"{name}:80:127.0.0.1:{port}", "tunnel@127.0.0.1"
            ),
        )
        if wait:
            await router.proc.wait_for(rf"event=tunnel_up name={name} ", start=start)
        return proc

    async def listener(self, router: Router, key: Path, port: int, *extra: str) -> LoggedProcess:
        return await self.spawn("listener", [*self.listener_argv(router, key, port), *extra])

    def listener_argv(
        self, router: Router, key: Path, port: int, *, ssh_address: str | None = None
    ) -> list[str]:
        known_hosts = router.known_hosts(self.path("known_hosts"))
        return [
            sys.executable,
            "-m",
            "listener",
            "--router",
            ssh_address or f"127.0.0.1:{router.ssh_port}",
            "--identity-file",
            str(key),
            "--known-hosts",
            str(known_hosts),
            "--target",
            f"127.0.0.1:{port}",
            "--backoff-max-s",
            "2",
        ]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    if shutil.which("ssh") is None:
        pytest.fail("OpenSSH client not installed: run the README's test command")
    async with trio.open_nursery() as nursery:
        stack = Stack(nursery=nursery, tmp=tmp_path)
        try:
            yield stack
        finally:
            # Shown by pytest only when the test fails: what each process said last.
            for proc in stack.processes:
                print(f"----- {proc.name} (pid {proc.process.pid}) -----")
                print("\n".join(proc.lines[-40:]))
            nursery.cancel_scope.cancel()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Debian's redis-server on a free loopback port, stopped by its PID at the end."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@dataclass
class World:
    """A router, a sample app and an authorized key: the usual starting point."""

    stack: Stack
    router: Router
    app: App
    key: Path


@pytest.fixture
async def world(stack: Stack) -> World:
    router = await stack.start_router()
    app = await stack.start_app()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    return World(stack, router, app, key)


def public_key_of(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


async def websocket_to(
    nursery: trio.Nursery, router: Router, name: str, resource: str = "/ws"
) -> trio_websocket.WebSocketConnection:
    """A WebSocket to ``resource`` on NAME.DOMAIN through the router's HTTPS front door."""
    _, websocket = await websocket_and_stream(nursery, router, name, resource)
    return websocket


async def websocket_and_stream(
    nursery: trio.Nursery, router: Router, name: str, resource: str = "/ws"
) -> tuple[trio.SSLStream[trio.SocketStream], trio_websocket.WebSocketConnection]:
    """``websocket_to``, and its TLS stream for the test to close: trio-websocket
    leaves the stream open when the peer ends the connection first."""
    stream = await router.open_tls(name)
    websocket = await trio_websocket.wrap_client_stream(
        nursery, stream, f"{name}.{router.domain}:{router.https_port}", resource,
        max_message_size=16 * 1024 * 1024,
    )  # fmt: skip
    return stream, websocket
