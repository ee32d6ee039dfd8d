"""Metrics, health and systemd notification of the router (issue 19, points 1 and 2).

Real parts: the router as a process (and a supervisor with two workers on
Debian's redis-server), stock OpenSSH ``ssh -R`` tunnels to the sample app,
Debian's ``promtool`` checking the exposition, Debian's ``prometheus``
scraping the router and queried through its HTTP API, and a unix datagram
socket the test binds as systemd's ``NOTIFY_SOCKET``. Waits are log lines,
datagrams and answers under deadlines; nothing sleeps.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from .conftest import (
    START_TIMEOUT_S,
    Router,
    Stack,
    World,
    public_key_of,
    websocket_and_stream,
)
from .redis_server import RedisServer
from .test_workers import BASE_ID, Workers, requests_until_both_workers_answer, worker_ready

METRICS = r"metrics=127\.0\.0\.1:(\d+)"
# Reason: Prometheus scrapes every second here; a loaded 2-core machine may lag a few.
PROMETHEUS_DEADLINE_S = 30.0


def sample(text: str, name: str, /, **labels: str) -> float:
    """The value of one series in an exposition (0 when it is absent)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def promtool_check(text: str) -> str:
    """``promtool check metrics`` on ``text``: its complaints ("" when it has none)."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool not installed (Debian package prometheus): run ./dev test")
    done = await trio.run_process(
        ["promtool", "check", "metrics"], stdin=text.encode(), capture_stdout=True,
        capture_stderr=True, check=False,
    )  # fmt: skip
    complaints = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, complaints
    return complaints


async def metrics_router(stack: Stack, *extra: str) -> tuple[Router, int]:
    router = await stack.start_router("--metrics-listen", "127.0.0.1:0", *extra)
    match = router.proc.find(r"event=router_ready .*" + METRICS)
    assert match is not None
    return router, int(match[1])


async def counted_after(port: int, expected: float, **labels: str) -> float:
    """hostmux_http_requests_total{labels} once it reached ``expected`` (the access
    record is counted just after the answer's last byte), then read again."""
    with trio.fail_after(START_TIMEOUT_S):
        while True:
            text = (await get(port, "/metrics")).text
            value = sample(text, "hostmux_http_requests_total", **labels)
            if value >= expected:
                return value
            await trio.sleep(0.02)  # polling a counter: the deadline above bounds it


async def test_metrics_pass_promtool_and_count_each_request_through_a_tunnel(
    stack: Stack,
) -> None:
    router, port = await metrics_router(stack)
    app = await stack.start_app()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "demo", app.port)

    assert (await get(port, "/healthz")).json() == {"status": "ok"}
    ready = await get(port, "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    first = (await get(port, "/metrics")).text
    assert await promtool_check(first) == ""
    assert sample(first, "hostmux_tunnels") == 1
    assert sample(first, "hostmux_tunnel_connects_total", result="ok") == 1
    assert sample(first, "hostmux_ready") == 1
    assert sample(first, "hostmux_build_info", component="router") == 1
    assert sample(first, "process_cpu_seconds_total") > 0

    before = sample(first, "hostmux_http_requests_total", code_class="2xx")
    for n in range(1, 4):
        assert (await router.get("demo", "/")).status_code == 200
        # Exactly one more per request (a scrape is not a request through the front door).
        assert await counted_after(port, before + n, code_class="2xx") == before + n
    text = (await get(port, "/metrics")).text
    assert sample(text, "hostmux_http_request_duration_seconds_count") == before + 3
    assert sample(text, "hostmux_bytes_total", direction="out") > 0
    # A name that is not there: a 4xx, counted as such.
    assert (await router.get("nobody", "/")).status_code == 404
    assert await counted_after(port, 1, code_class="4xx") == 1
    assert await promtool_check((await get(port, "/metrics")).text) == ""
    # No per-name series unless asked for.
    assert "demo" not in (await get(port, "/metrics")).text
    assert (await get(port, "/other")).status_code == 404

    # A WebSocket through the tunnel is open while it echoes, and counted once it ends.
    stream, websocket = await websocket_and_stream(stack.nursery, router, "demo")
    await websocket.send_message("ping")
    assert await websocket.get_message() == "ping"
    assert sample((await get(port, "/metrics")).text, "hostmux_websockets_open") == 1
    await websocket.aclose()
    await stream.aclose()
    assert await counted_after(port, 1, code_class="1xx") == 1
    assert sample((await get(port, "/metrics")).text, "hostmux_websockets_open") == 0


async def test_per_tunnel_series_only_when_asked(stack: Stack) -> None:
    router, port = await metrics_router(stack, "--metrics-per-tunnel")
    app = await stack.start_app()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "demo", app.port)
    assert (await router.get("demo", "/")).status_code == 200
    await counted_after(port, 1, code_class="2xx")
    text = (await get(port, "/metrics")).text
    assert sample(text, "hostmux_tunnel_http_requests_total", name="demo", code_class="2xx") == 1
    assert await promtool_check(text) == ""


async def test_readyz_is_degraded_not_failed_while_the_portal_is_down(stack: Stack) -> None:
    with socket.socket() as probe:  # a port nothing listens on: the portal is down
        probe.bind(("127.0.0.1", 0))
        down = probe.getsockname()[1]
    router, port = await metrics_router(
        stack, "--portal-keys-url", f"http://127.0.0.1:{down}/instances/{{id}}/keys"
    )
    answer = await get(port, "/readyz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "degraded"
    assert set(body["degraded"]) == {"portal"}
    text = (await get(port, "/metrics")).text
    assert sample(text, "hostmux_degraded", component="portal") == 1
    assert sample(text, "hostmux_degraded", component="registry") == 0
    assert sample(text, "hostmux_ready") == 1
    assert sample(text, "hostmux_portal_lookup_duration_seconds_count") >= 1
    assert (await get(port, "/healthz")).status_code == 200
    # The router still serves (a name nobody holds: its 404 page).
    assert (await router.get("nobody", "/")).status_code == 404
    assert await promtool_check(text) == ""
    # An instance's login while the portal is down: refused, and counted as such.
    mark = len(router.proc.lines)
    key = stack.new_key("instance")
    await stack.spawn(
        "ssh",
        stack.ssh_argv(router, key, "-N", "-R", "alice-lab:80:127.0.0.1:9", "alice-lab@127.0.0.1"),
    )
    await router.proc.wait_for(r"event=ssh_auth_refused ", start=mark)
    text = (await get(port, "/metrics")).text
    assert sample(text, "hostmux_ssh_auth_failures_total", reason="portal_unavailable") >= 1
    assert sample(text, "hostmux_ssh_auth_failures_total", reason="key_refused") == 0


def write_certificate(directory: Path, host: str, *, days: tuple[int, int]) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` valid from ``days[0]`` to ``days[1]`` from now."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = directory / f"{host}.crt", directory / f"{host}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    return cert_file, key_file


@pytest.mark.parametrize(
    ("host", "days", "reason"),
    [
        ("*.example.org", (-30, -1), r"the TLS certificate \S+ expired at 20"),
        ("*.elsewhere.net", (-1, 30), r"the TLS certificate \S+ names no host under example\.org"),
    ],
)
async def test_readyz_fails_without_a_valid_certificate_for_the_domain(
    stack: Stack, tmp_path: Path, host: str, days: tuple[int, int], reason: str
) -> None:
    cert, key = write_certificate(tmp_path, host, days=days)
    _, port = await metrics_router(
        stack, "--domain", "example.org", "--tls-cert-file", str(cert), "--tls-key-file", str(key)
    )
    answer = await get(port, "/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "not ready"
    assert re.fullmatch(reason + r".*", body["reason"]), body
    assert "\n" not in body["reason"]
    assert sample((await get(port, "/metrics")).text, "hostmux_ready") == 0
    assert (await get(port, "/healthz")).status_code == 200  # alive, only not ready


class NotifySocket:
    """A unix datagram socket standing in for systemd's: each message with its sender."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, str]] = []

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    async def bind(self) -> None:
        await self.sock.bind(str(self.path))

    async def wait_for(self, line: str) -> int:
        """The pid that sent a message with ``line`` (received until one comes)."""
        with trio.fail_after(START_TIMEOUT_S):
            while True:
                for pid, text in self.messages:
                    if line in text.split("\n"):
                        return pid
                data, ancillary, _, _ = await self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
                pid = next(
                    struct.unpack("iII", payload)[0]
                    for level, kind, payload in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                )
                self.messages.append((pid, data.decode()))


async def test_sd_notify_ready_watchdog_stopping(stack: Stack, tmp_path: Path) -> None:
    with NotifySocket(tmp_path / "notify.sock") as notify:
        await notify.bind()
        await sd_notify_of_one_router(stack, notify, tmp_path)


async def sd_notify_of_one_router(stack: Stack, notify: NotifySocket, tmp_path: Path) -> None:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    proc = await stack.spawn(
        "router",
        [
            sys.executable, "-m", "router", "--state-dir", str(tmp_path / "state"),
            "--ssh-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--https-listen", "",
        ],
        env=env,
    )  # fmt: skip
    assert await notify.wait_for("READY=1") == proc.process.pid
    await proc.wait_for("event=router_ready")
    assert await notify.wait_for("WATCHDOG=1") == proc.process.pid
    proc.process.send_signal(signal.SIGTERM)
    assert await notify.wait_for("STOPPING=1") == proc.process.pid
    assert await proc.wait_exit() == 0


async def start_workers_with_metrics(
    stack: Stack, redis: RedisServer, env: dict[str, str]
) -> tuple[Workers, int]:
    state_dir = stack.path("router-state")
    state_dir.mkdir()
    authorized = state_dir / "authorized_keys"
    authorized.touch()
    proc = await stack.spawn(
        "supervisor",
        [
            sys.executable, "-m", "router", "--state-dir", str(state_dir),
            "--authorized-keys-file", str(authorized), "--ssh-listen", "127.0.0.1:0",
            "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--workers", "2", "--registry", redis.url, "--router-id", BASE_ID,
            "--metrics-listen", "127.0.0.1:0",
        ],
        env=env,
    )  # fmt: skip
    bound = await proc.wait_for(
        r"event=supervisor_ready workers=2 .*ssh=127\.0\.0\.1:(\d+) https=127\.0\.0\.1:(\d+) "
        r"http=127\.0\.0\.1:(\d+) " + METRICS + " worker=supervisor$"
    )
    pids = {n: int((await worker_ready(proc, n))["pid"]) for n in (1, 2)}
    ready = await worker_ready(proc, 1)
    router = Router(
        proc=proc, state_dir=state_dir, authorized_keys=authorized,
        ssh_port=int(bound[1]), https_port=int(bound[2]), http_port=int(bound[3]),
        host_key_fingerprint=ready["key"], ca_cert=Path(ready["ca"]),
    )  # fmt: skip
    return Workers(router, pids), int(bound[4])


async def test_two_workers_one_metrics_and_the_supervisor_speaks_to_systemd(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    with NotifySocket(tmp_path / "notify.sock") as notify:
        await notify.bind()
        await two_workers(stack, redis_server, notify)


async def two_workers(stack: Stack, redis_server: RedisServer, notify: NotifySocket) -> None:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    workers, port = await start_workers_with_metrics(stack, redis_server, env)
    supervisor = workers.supervisor.process.pid
    assert await notify.wait_for("READY=1") == supervisor

    # Requests until both workers answered some: the one /metrics counts them all.
    statuses = await requests_until_both_workers_answer(workers, "nobody")
    assert await counted_after(port, len(statuses), code_class="4xx") == len(statuses)
    text = (await get(port, "/metrics")).text
    assert sample(text, "hostmux_http_requests_total", code_class="4xx") == len(statuses)
    assert sample(text, "hostmux_workers_answering") == 2
    for worker in ("1", "2", "supervisor"):
        assert sample(text, "process_cpu_seconds_total", worker=worker) > 0
    assert sample(text, "hostmux_ready") == 1
    assert await promtool_check(text) == ""
    ready = await get(port, "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    # The workers' own snapshots sit in state_dir/run, for the supervisor only.
    run = workers.router.state_dir / "run"
    assert sorted(p.name for p in run.iterdir()) == ["worker-1.ops.sock", "worker-2.ops.sock"]
    assert run.stat().st_mode & 0o777 == 0o700

    workers.supervisor.process.send_signal(signal.SIGTERM)
    assert await notify.wait_for("STOPPING=1") == supervisor
    assert await workers.supervisor.wait_exit() == 0
    assert list(run.iterdir()) == []  # each worker removed its socket
    # NotifyAccess=main: every message came from the supervisor, none from a worker.
    assert {pid for pid, _ in notify.messages} == {supervisor}


async def test_a_real_prometheus_scrapes_the_router(world: World, tmp_path: Path) -> None:
    """Debian's prometheus scrapes /metrics; its HTTP API then reports the requests."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not installed (Debian package prometheus): run ./dev test")
    stack = world.stack
    router, port = await metrics_router(stack)
    router.authorize(public_key_of(world.key))
    await stack.openssh_tunnel(router, world.key, "demo", world.app.port)
    for _ in range(5):
        assert (await router.get("demo", "/")).status_code == 200
    await counted_after(port, 5, code_class="2xx")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        web = probe.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: hostmux\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    prometheus = await stack.spawn(
        "prometheus",
        [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
    )  # fmt: skip
    await prometheus.wait_for("Server is ready to receive web requests")
    query = 'hostmux_http_requests_total{code_class="2xx",job="hostmux"}'
    found: list[object] = []
    with trio.fail_after(PROMETHEUS_DEADLINE_S):
        while True:
            answer = await get(web, f"/api/v1/query?query={query}")
            found = answer.json()["data"]["result"]
            if found:
                break
            await trio.sleep(0.2)  # until the first scrape landed, under the deadline
    (series,) = found
    assert isinstance(series, dict)
    assert float(series["value"][1]) == 5
    up = (await get(web, '/api/v1/query?query=up{job="hostmux"}')).json()["data"]["result"]
    assert [float(s["value"][1]) for s in up] == [1.0]


async def test_the_listener_reports_its_connection_and_its_drop(world: World) -> None:
    stack, router = world.stack, world.router
    router.authorize(public_key_of(world.key))
    listener = await stack.listener(
        router, world.key, world.app.port, "--name", "demo", "--metrics-listen", "127.0.0.1:0",
        "--no-check-url",
    )  # fmt: skip
    port = int((await listener.wait_for(r"event=listener_metrics listen=127\.0\.0\.1:(\d+)"))[1])
    await listener.wait_for(r"event=tunnel_up name=demo ")
    ready = await get(port, "/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    text = (await get(port, "/metrics")).text
    assert await promtool_check(text) == ""
    assert sample(text, "hostmux_listener_connected") == 1
    assert sample(text, "hostmux_listener_connects_total", result="ok") == 1
    assert sample(text, "hostmux_listener_reconnects_total") == 0
    assert sample(text, "hostmux_build_info", component="listener") == 1

    # The router goes: the listener says so, and is not ready until it holds the name again.
    mark = len(listener.lines)
    assert await router.proc.stop() == 0
    await listener.wait_for(r"event=tunnel_down name=demo ", start=mark)
    text = (await get(port, "/metrics")).text
    assert sample(text, "hostmux_listener_connected") == 0
    assert sample(text, "hostmux_listener_reconnects_total") == 1
    not_ready = await get(port, "/readyz")
    assert not_ready.status_code == 503
    assert "no connection holds the name" in not_ready.json()["reason"]
    assert (await get(port, "/healthz")).status_code == 200


async def test_the_auth_helper_counts_requests_sent_to_log_in(stack: Stack) -> None:
    app = await stack.start_app()
    helper = await stack.spawn(
        "authhelper",
        [
            sys.executable, "-m", "authhelper", "--listen", "127.0.0.1:0",
            "--app", f"127.0.0.1:{app.port}", "--instance-id", "demo",
            # Nothing listens there: a request without a session is only redirected.
            "--portal-url", "http://127.0.0.1:9", "--public-url", "https://demo.localhost",
            "--cookie-keys-file", str(stack.path("cookie-keys")),
            "--metrics-listen", "127.0.0.1:0",
        ],
    )  # fmt: skip
    ready = await helper.wait_for(r"event=authhelper_ready listen=127\.0\.0\.1:(\d+) .*" + METRICS)
    helper_port, port = int(ready[1]), int(ready[2])
    async with httpx.AsyncClient(timeout=10.0) as client:
        answer = await client.get(
            f"http://127.0.0.1:{helper_port}/x", headers={"host": "demo.localhost"}
        )
    assert answer.status_code == 302
    text = (await get(port, "/metrics")).text
    assert await promtool_check(text) == ""
    assert sample(text, "hostmux_authhelper_denials_total", reason="no_session") == 1
    assert sample(text, "hostmux_authhelper_logins_total", result="ok") == 0
    assert (await get(port, "/readyz")).json() == {"status": "ready"}


async def ready_state(port: int, status: int, state: str) -> dict[str, Any]:
    """/readyz's body once it answers ``status`` with ``state`` (polled under a deadline)."""
    with trio.fail_after(START_TIMEOUT_S):
        while True:
            answer = await get(port, "/readyz")
            body: dict[str, Any] = answer.json()
            if (answer.status_code, body["status"]) == (status, state):
                return body
            await trio.sleep(0.1)  # the registry is checked each renewal round (1 s here)


async def test_readyz_follows_the_registry_degraded_then_cut_off(
    stack: Stack, redis_server: RedisServer
) -> None:
    """Redis stops: the router serves its tunnels (degraded, 200) for name_reservation_s,
    then closes them and is not ready (503) until Redis is back."""
    router, port = await metrics_router(
        stack, "--registry", redis_server.url, "--lease-ttl-s", "3",
        "--name-reservation-s", "4",
    )  # fmt: skip
    # A tunnel: its lease renewals are how the router finds the registry gone.
    app = await stack.start_app()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "demo", app.port)
    assert (await get(port, "/readyz")).json() == {"status": "ready"}
    redis_server.stop()
    body = await ready_state(port, 200, "degraded")
    assert body["degraded"] == {"registry": ANY}
    text = (await get(port, "/metrics")).text
    assert sample(text, "hostmux_degraded", component="registry") == 1
    assert sample(text, "hostmux_ready") == 1
    assert (await router.get("demo", "/")).status_code == 200  # degraded, still serving
    body = await ready_state(port, 503, "not ready")
    assert str(body["reason"]).startswith("cut off from the route registry for ")
    await router.proc.wait_for(r"event=tunnel_closed name=demo ")  # at the next round
    assert sample((await get(port, "/metrics")).text, "hostmux_tunnels") == 0
    assert sample((await get(port, "/metrics")).text, "hostmux_ready") == 0
    assert (await get(port, "/healthz")).status_code == 200
    assert router.proc.process.returncode is None  # still running, waiting for Redis


async def test_readyz_fails_while_the_router_drains_after_sigterm(stack: Stack) -> None:
    # The grace outlasts the checks below (a request waiting for its answer holds the drain).
    router, port = await metrics_router(stack, "--shutdown-grace-s", "5")
    app = await stack.start_app()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    await stack.openssh_tunnel(router, key, "demo", app.port)

    async def hang(cancel_scope: trio.CancelScope) -> None:
        with cancel_scope:
            await router.get("demo", "/slow-headers")  # the app never answers

    waiting = trio.CancelScope()
    stack.nursery.start_soon(hang, waiting)
    with trio.fail_after(START_TIMEOUT_S):  # the request is in flight: the drain will wait
        while True:
            text = (await get(port, "/metrics")).text
            if sample(text, "hostmux_browser_connections") == 1:
                break
            await trio.sleep(0.02)  # polling a gauge under the deadline
    mark = len(router.proc.lines)
    router.proc.process.send_signal(signal.SIGTERM)
    await router.proc.wait_for(r"event=router_stopping connections=1", start=mark)
    answer = await get(port, "/readyz")
    assert answer.status_code == 503
    assert answer.json()["reason"] == "stopping: no new connections are accepted"
    assert (await get(port, "/healthz")).status_code == 200  # alive while it drains
    waiting.cancel()
    assert await router.proc.wait_exit() == 0  # after the grace at most


async def test_portal_mode_figures_url_published_and_portal_lookups(stack: Stack) -> None:
    """The example portal, a router in portal mode and a DIT4C listener, each counting."""
    from .test_portal_mode import (
        dit4c_listener,
        start_portal,
        start_portal_router,
        write_private_key,
    )

    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal, "--metrics-listen", "127.0.0.1:0")
    match = router.proc.find(r"event=router_ready .*" + METRICS)
    assert match is not None
    router_port = int(match[1])
    app = await stack.start_app()
    instance = await portal.create_instance("alice")
    key = write_private_key(stack, instance)
    listener = await dit4c_listener(
        stack, router, instance, key, app, "--metrics-listen", "127.0.0.1:0"
    )
    port = int((await listener.wait_for(r"event=listener_metrics listen=127\.0\.0\.1:(\d+)"))[1])
    await listener.wait_for(r"event=url_published ")  # after the portal accepted it
    text = (await get(port, "/metrics")).text
    assert await promtool_check(text) == ""
    assert sample(text, "hostmux_listener_url_published_total") == 1
    assert sample(text, "hostmux_listener_url_published_timestamp_seconds") > 1.7e9
    assert sample(text, "hostmux_listener_connected") == 1
    # The router asked the portal for the instance's keys, and says how long that took.
    text = (await get(router_port, "/metrics")).text
    assert sample(text, "hostmux_portal_lookup_duration_seconds_count") >= 1
    assert sample(text, "hostmux_tunnels") == 1
    assert (await get(router_port, "/readyz")).json() == {"status": "ready"}
