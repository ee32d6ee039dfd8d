"""The admin API, its command-line client and its status page (issue 19, point 3).

Real parts: the router as a process, stock OpenSSH ``ssh -R`` tunnel clients,
the admin API over loopback TCP and over a unix socket, ``python -m router
tunnels|kick|block|unblock|drain`` as an operator types them, Debian's
Chromium for the status page, and Debian's redis-server for workers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import (
    START_TIMEOUT_S,
    LoggedProcess,
    Router,
    Stack,
    public_key_of,
    websocket_to,
)
from .raw_http import exchange, parse_responses
from .redis_server import RedisServer

TOKEN = "s3cret-admin-token-for-tests"
# Reason: each tunnel lands on either worker (~1 in 2); this many reach both many times over.
MAX_TUNNELS_TO_SEE_BOTH = 60


class Admin:
    """A router's admin API: over TCP (``port``) or a unix socket (``socket_path``)."""

    def __init__(self, flags: list[str], *, port: int = 0, socket_path: Path | None = None):
        self.flags = flags  # what the CLI needs to find it (as the router was started)
        self.port = port
        self.socket_path = socket_path

    def client(self) -> httpx.AsyncClient:
        if self.socket_path is not None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
            return httpx.AsyncClient(transport=transport, base_url="http://admin", timeout=30)
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        async with self.client() as client:
            return await client.request(method, path, json=body, headers=headers)

    async def tunnels(self) -> list[dict[str, Any]]:
        response = await self.call("GET", "/api/tunnels")
        assert response.status_code == 200, response.text
        tunnels: list[dict[str, Any]] = response.json()["tunnels"]
        return tunnels

    async def wait_tunnels(self, names: set[str]) -> list[dict[str, Any]]:
        """The listing once it shows exactly ``names`` (a registry's snapshots lag a little)."""
        with trio.fail_after(START_TIMEOUT_S):
            while True:
                tunnels = await self.tunnels()
                if {t["name"] for t in tunnels} == names:
                    return tunnels
                await trio.sleep(0.05)  # polling the API under test, bounded by the deadline

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m router ARGS`` with the router's flags, as an operator runs it."""
        done = await trio.run_process(
            [sys.executable, "-m", "router", *args, *self.flags],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )


def token_file(stack: Stack) -> Path:
    path = stack.path("admin-token")
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


async def start_admin_router(
    stack: Stack, *extra: str, state_dir: Path | None = None, unix: bool = False
) -> tuple[Router, Admin]:
    tokens = token_file(stack)
    where = str(stack.tmp / "admin.sock") if unix else "127.0.0.1:0"
    flags = ["--admin-listen", where, "--admin-token-file", str(tokens)]
    router = await stack.start_router(*flags, *extra, state_dir=state_dir)
    ready = await router.proc.wait_for(r"event=admin_ready admin=(\S+) token=(\S+)")
    assert ready[2] == f'"{tokens}#' + ready[2].split("#")[1]  # an id, never the token
    assert TOKEN not in "\n".join(router.proc.lines)
    cli_flags = ["--state-dir", str(router.state_dir), *flags]
    if unix:
        return router, Admin(cli_flags, socket_path=Path(where))
    port = int(ready[1].rsplit(":", 1)[1])
    cli_flags[cli_flags.index(where)] = f"127.0.0.1:{port}"
    return router, Admin(cli_flags, port=port)


async def tunnel_owner(router: Router, name: str) -> str:
    return (await router.proc.wait_for(rf"event=tunnel_up name={name} .*key=(\S+)"))[1]


async def test_the_api_lists_a_live_tunnel_refuses_bad_tokens_and_kicks(stack: Stack) -> None:
    router, admin = await start_admin_router(stack)
    app = await stack.start_app()
    alice = stack.new_key("alice")
    router.authorize(public_key_of(alice))
    ssh = await stack.openssh_tunnel(router, alice, "demo", app.port)
    owner = await tunnel_owner(router, "demo")
    for _ in range(2):
        assert (await router.get("demo", "/")).status_code == 200
    async with router.client() as client:
        upload = router.request(client, "POST", "demo", "/upload", content=b"x" * 1000)
        assert (await client.send(upload)).status_code == 200

    for token in (None, "wrong-token-wrong-token", TOKEN + "x"):
        refused = await admin.call("GET", "/api/tunnels", token=token)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "tunnels" not in refused.json()
    [tunnel] = await admin.tunnels()
    assert tunnel["name"] == "demo" and tunnel["owner"] == owner
    assert tunnel["owner"].startswith("SHA256:") and tunnel["transport"] == "ssh"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", tunnel["peer"])
    assert tunnel["requests"] == 3 and tunnel["bytes_out"] > 0 and tunnel["bytes_in"] == 1000
    assert tunnel["websockets_open"] == 0 and tunnel["last_activity"] >= tunnel["since"]
    assert tunnel["router"] is None

    start = len(router.proc.lines)
    kicked = await admin.call("POST", "/api/kick", {"name": "demo"})
    assert kicked.status_code == 200 and kicked.json() == {"name": "demo", "kicked": 1}
    assert await ssh.wait_exit() != 0  # the ssh client saw its connection end
    line = (await router.proc.wait_for(r"event=admin_action action=kick .*", start=start))[0]
    assert "name=demo peer=127.0.0.1:" in line and f'token="{admin.flags[-1]}#' in line
    assert await admin.tunnels() == []
    assert (await admin.call("POST", "/api/kick", {"name": "demo"})).status_code == 404
    assert (await router.get("demo", "/")).status_code == 502  # offline: reserved for alice


async def test_a_listener_over_websocket_is_wss_and_open_websockets_are_counted(
    stack: Stack,
) -> None:
    router, admin = await start_admin_router(stack)
    app = await stack.start_app()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    listener = await stack.listener(
        router, key, app.port, "--name", "viawss", "--transport", "wss",
        "--wss-url", f"wss://localhost:{router.https_port}/_hostmux/ssh",
        "--router-ca-file", str(router.ca_cert),
    )  # fmt: skip
    await listener.wait_for(r"event=tunnel_up name=viawss .*transport=wss")
    await listener.wait_for(r"event=url_checked ")  # the listener's own request, counted
    [tunnel] = await admin.tunnels()
    assert tunnel["transport"] == "wss" and tunnel["websockets_open"] == 0
    before = tunnel["requests"]
    assert before >= 1

    async with trio.open_nursery() as nursery:
        ws = await websocket_to(nursery, router, "viawss")
        with trio.fail_after(START_TIMEOUT_S):
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
        [tunnel] = await admin.tunnels()
        assert tunnel["websockets_open"] == 1 and tunnel["requests"] == before  # still open
        await ws.aclose()
    await router.proc.wait_for(r"event=request .*name=viawss .*status=101")
    [tunnel] = await admin.tunnels()
    assert tunnel["websockets_open"] == 0 and tunnel["requests"] == before + 1
    assert tunnel["bytes_in"] > 0  # the frames the browser sent


async def test_bad_admin_requests_get_one_line_errors(stack: Stack) -> None:
    router, admin = await start_admin_router(stack)
    for method, path, body, status in (
        ("GET", "/api/kick", None, 405),
        ("GET", "/api/nothing", None, 404),
        ("POST", "/api/block", {"kind": "door", "value": "x"}, 400),
        ("POST", "/api/block", {"kind": "name", "value": "Not A Name!"}, 400),
        ("POST", "/api/kick", [1, 2], 400),
    ):
        response = await admin.call(method, path, body)
        assert response.status_code == status, (path, response.text)
        assert set(response.json()) == {"error"}
    async with admin.client() as client:
        response = await client.post("/api/kick", content=b"{not json", headers={
            "authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert response.status_code == 400 and response.json() == {"error": "the body is not JSON"}
    # Hostile bytes: each a one-line JSON answer and a close, the router unharmed.
    for data, status in (
        (b"POST /api/block HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n", 413),
        (b"GET /api/tunnels HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
    ):
        [answer] = parse_responses(await exchange(admin.port, data))
        assert answer.status == status and json.loads(answer.body)["error"]
    page = await admin.call("GET", "/", token=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in page.text and "set-cookie" not in page.headers
    assert router.proc.process.returncode is None


async def test_a_blocked_key_is_refused_across_a_restart_until_unblocked(stack: Stack) -> None:
    state_dir = stack.path("router-state")
    router, admin = await start_admin_router(stack, state_dir=state_dir)
    app = await stack.start_app()
    alice, bob = stack.new_key("alice"), stack.new_key("bob")
    router.authorize(public_key_of(alice))
    router.authorize(public_key_of(bob))
    ssh = await stack.openssh_tunnel(router, alice, "demo", app.port)
    owner = await tunnel_owner(router, "demo")

    done = await admin.cli("block", "key", owner, "--reason", "abuse")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kicked"] == 1
    assert await ssh.wait_exit() != 0  # blocking is kicking
    blocks_file = state_dir / "blocks.json"
    assert stat.S_IMODE(blocks_file.stat().st_mode) == 0o600
    assert owner in blocks_file.read_text()

    async def refused(key: Path, name: str, reason: str) -> None:
        start = len(router.proc.lines)
        client = await stack.openssh_tunnel(router, key, name, app.port, wait=False)
        assert await client.wait_exit() != 0  # ExitOnForwardFailure
        assert any("remote port forwarding failed" in line for line in client.lines)
        await router.proc.wait_for(rf"event=forward_refused .*reason=\"{reason}", start=start)

    await refused(alice, "demo", "this key is blocked")
    await refused(alice, "other", "this key is blocked")
    # A name block refuses every key; bob's other names are fine.
    assert (await admin.call("POST", "/api/block", {"kind": "name", "value": "held"})).is_success
    await refused(bob, "held", "the name 'held' is blocked")

    await router.proc.stop()
    router, admin = await start_admin_router(stack, state_dir=state_dir)
    listed = await admin.cli("blocks")
    assert listed.returncode == 0 and owner in listed.stdout and "abuse" in listed.stdout
    await refused(alice, "demo", "this key is blocked")

    done = await admin.cli("unblock", "key", owner)
    assert done.returncode == 0, done.stderr
    again = await admin.cli("unblock", "key", owner)
    assert again.returncode == 1 and "404: no block on key" in again.stderr
    await stack.openssh_tunnel(router, alice, "demo", app.port)
    assert (await router.get("demo", "/")).status_code == 200


async def test_the_cli_and_a_unix_socket_admin_listener(stack: Stack) -> None:
    router, admin = await start_admin_router(stack, "--metrics-listen", "127.0.0.1:0", unix=True)
    metrics_port = int((await router.proc.wait_for(r"metrics=127\.0\.0\.1:(\d+)"))[1])
    assert admin.socket_path is not None
    assert stat.S_IMODE(admin.socket_path.stat().st_mode) == 0o600
    app = await stack.start_app()
    alice = stack.new_key("alice")
    router.authorize(public_key_of(alice))
    ssh = await stack.openssh_tunnel(router, alice, "demo", app.port)
    ssh2 = await stack.openssh_tunnel(router, alice, "second", app.port)
    assert (await router.get("demo", "/")).status_code == 200

    listed = await admin.cli("tunnels")
    assert listed.returncode == 0, listed.stderr
    head, *rows = listed.stdout.splitlines()
    assert head.split()[:4] == ["NAME", "OWNER", "PEER", "VIA"]
    assert [row.split()[0] for row in rows] == ["demo", "second"]
    assert rows[0].split()[3] == "ssh" and rows[0].split()[6] == "1"  # one request
    as_json = json.loads((await admin.cli("tunnels", "--json")).stdout)
    assert {t["name"] for t in as_json["tunnels"]} == {"demo", "second"}
    # The same options from a config file and from the environment, as the router takes them.
    config = stack.path("router.toml")
    state_dir, where, tokens = admin.flags[1], admin.flags[3], admin.flags[5]
    config.write_text(f'state_dir = "{state_dir}"\nadmin_listen = "{where}"\n')
    env = {**os.environ, "HOSTMUX_ADMIN_TOKEN_FILE": tokens}
    by_config = await trio.run_process(
        [sys.executable, "-m", "router", "tunnels", "--json", "--config", str(config)],
        capture_stdout=True, capture_stderr=True, check=False, env=env,
    )  # fmt: skip
    assert by_config.returncode == 0, by_config.stderr
    assert json.loads(by_config.stdout) == as_json

    start = len(router.proc.lines)
    kicked = await admin.cli("kick", "demo")
    assert kicked.returncode == 0, kicked.stderr
    assert await ssh.wait_exit() != 0
    line = (await router.proc.wait_for(r"event=admin_action action=kick .*", start=start))[0]
    assert re.search(r"peer=unix:pid:\d+:uid:\d+ ", line)
    missing = await admin.cli("kick", "demo")
    assert missing.returncode == 1 and "no tunnel is called 'demo'" in missing.stderr

    no_admin = await trio.run_process(
        [sys.executable, "-m", "router", "tunnels", "--state-dir", str(router.state_dir)],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert no_admin.returncode == 2 and "admin_listen is not set" in no_admin.stderr.decode()

    # A drain: tunnels closed, no new browser connections, the admin API still answers.
    drained = await admin.cli("drain")
    assert drained.returncode == 0 and "router pid" in drained.stdout
    await router.proc.wait_for(r"event=drain_done tunnels_closed=1", start=start)
    assert await ssh2.wait_exit() != 0
    with pytest.raises(httpx.ConnectError):
        await router.get("second", "/")
    assert await admin.tunnels() == []
    async with httpx.AsyncClient() as client:  # a load balancer takes it out
        ready = await client.get(f"http://127.0.0.1:{metrics_port}/readyz")
    assert ready.status_code == 503 and "stopping" in ready.text
    assert router.proc.process.returncode is None  # it stays up until SIGTERM
    assert await router.proc.stop() == 0
    assert not admin.socket_path.exists()  # removed at the end


@pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="Debian chromium + chromium-driver not installed (./dev test installs them)",
)
async def test_the_status_page_in_chromium_shows_the_tunnel_after_the_token(
    stack: Stack,
) -> None:
    from selenium.webdriver.common.by import By

    from .test_browser import Browser

    router, admin = await start_admin_router(stack)
    app = await stack.start_app()
    alice = stack.new_key("alice")
    router.authorize(public_key_of(alice))
    await stack.openssh_tunnel(router, alice, "demo", app.port)
    browser = Browser(stack.path("chromium"), router.ca_cert)
    try:
        await browser.open(f"http://127.0.0.1:{admin.port}/")

        def enter(token: str) -> Any:
            def typing(driver: Any) -> None:
                field = driver.find_element(By.ID, "token")
                field.clear()
                field.send_keys(token)
                driver.find_element(By.ID, "use-token").click()

            return typing

        await browser.wait_until(lambda d: d.find_element(By.ID, "token").is_displayed(), "ask")
        await browser.run(enter("not-the-token-at-all"))
        await browser.wait_until(
            lambda d: "refused" in d.find_element(By.ID, "login-error").text, "a refusal"
        )
        await browser.run(enter(TOKEN))
        await browser.wait_until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#tunnels tr[data-name='demo']"),
            "the tunnel in the table",
        )
        row = await browser.run(
            lambda d: d.find_element(By.CSS_SELECTOR, "#tunnels tr[data-name='demo']").text
        )
        assert "demo" in row and "SHA256:" in row and "ssh" in row
        # Kept for this tab: a reload shows the table without asking again.
        await browser.run(lambda d: d.refresh())
        await browser.wait_until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#tunnels tr[data-name='demo']"),
            "the table again after a reload",
        )
        assert await browser.run(lambda d: d.execute_script("return document.cookie") == "")
        # The kick button closes the tunnel; the table follows.
        await browser.run(
            lambda d: d.find_element(
                By.CSS_SELECTOR, "#tunnels tr[data-name='demo'] button"
            ).click()
        )
        await browser.wait_until(
            lambda d: not d.find_elements(By.CSS_SELECTOR, "#tunnels tr[data-name='demo']"),
            "the kicked tunnel gone from the table",
        )
        await router.proc.wait_for(r"event=admin_action action=kick name=demo")

        # The block form: the name appears in the blocks table, and is kept.
        def block_name(driver: Any) -> None:
            driver.find_element(By.ID, "block-kind").send_keys("name")
            driver.find_element(By.ID, "block-value").send_keys("phish")
            driver.find_element(By.ID, "block").click()

        await browser.run(block_name)
        await browser.wait_until(
            lambda d: "phish" in d.find_element(By.ID, "blocks").text, "the block in the table"
        )
        assert [b["value"] for b in (await admin.call("GET", "/api/blocks")).json()["blocks"]] == [
            "phish"
        ]
    finally:
        await browser.run(lambda d: d.quit())


async def test_a_router_with_a_registry_answers_from_the_registry(
    stack: Stack, redis_server: RedisServer
) -> None:
    router, admin = await start_admin_router(
        stack, "--registry", redis_server.url, "--router-id", "solo"
    )
    app = await stack.start_app()
    alice = stack.new_key("alice")
    router.authorize(public_key_of(alice))
    ssh = await stack.openssh_tunnel(router, alice, "demo", app.port)
    [tunnel] = await admin.wait_tunnels({"demo"})
    assert tunnel["router"] == "solo" and tunnel["transport"] == "ssh"
    assert (await admin.call("POST", "/api/kick", {"name": "demo"})).status_code == 200
    assert await ssh.wait_exit() != 0
    await admin.wait_tunnels(set())
    done = await admin.cli("block", "key", tunnel["owner"])
    assert done.returncode == 0, done.stderr
    assert not (router.state_dir / "blocks.json").exists()  # in the registry
    await router.proc.stop()
    router, admin = await start_admin_router(
        stack, "--registry", redis_server.url, "--router-id", "solo", state_dir=router.state_dir
    )
    start = len(router.proc.lines)
    refused = await stack.openssh_tunnel(router, alice, "demo", app.port, wait=False)
    assert await refused.wait_exit() != 0
    await router.proc.wait_for(r"event=forward_refused .*this key is blocked", start=start)


# -- workers = 2 with a registry: one admin listener, the supervisor's --------------------


async def test_with_workers_the_supervisor_lists_and_kicks_tunnels_of_both_workers(
    stack: Stack, redis_server: RedisServer
) -> None:
    from .test_workers import BASE_ID, start_workers

    tokens = token_file(stack)
    workers = await start_workers(
        stack, redis_server, "--admin-listen", "127.0.0.1:0", "--admin-token-file", str(tokens)
    )
    proc = workers.supervisor
    ready = await proc.wait_for(r"event=admin_ready admin=127\.0\.0\.1:(\d+) .*worker=supervisor")
    assert len([line for line in proc.lines if "event=admin_ready" in line]) == 1
    admin = Admin(
        ["--state-dir", str(workers.router.state_dir), "--admin-listen",
         f"127.0.0.1:{ready[1]}", "--admin-token-file", str(tokens)],
        port=int(ready[1]),
    )  # fmt: skip
    app = await stack.start_app()
    alice = stack.new_key("alice")
    workers.router.authorize(public_key_of(alice))

    # Tunnels until both workers hold one (the kernel gives each connection to either;
    # a tunnel on a worker already covered is closed again).
    clients: dict[str, LoggedProcess] = {}
    covered: set[str] = set()
    for n in range(MAX_TUNNELS_TO_SEE_BOTH):
        name = f"t{n}"
        client = await stack.openssh_tunnel(workers.router, alice, name, app.port)
        worker = (await proc.wait_for(rf"event=tunnel_up name={name} .* worker=(\d+)$"))[1]
        if worker in covered:
            await client.stop()
            await proc.wait_for(rf"event=tunnel_down name={name} ")
            continue
        covered.add(worker)
        clients[name] = client
        if covered == {"1", "2"}:
            break
    assert covered == {"1", "2"}, f"only worker {covered} took {n + 1} tunnels"
    tunnels = await admin.wait_tunnels(set(clients))
    held_by = {t["name"]: t["router"] for t in tunnels}
    assert set(held_by.values()) == {f"{BASE_ID}.1", f"{BASE_ID}.2"}, held_by

    # Kick one tunnel of each worker through the supervisor's API.
    victims = {router: name for name, router in held_by.items()}
    for router_id, name in victims.items():
        kicked = await admin.call("POST", "/api/kick", {"name": name})
        assert kicked.status_code == 200, kicked.text
        assert await clients[name].wait_exit() != 0, router_id
    left = set(clients) - set(victims.values())
    await admin.wait_tunnels(left)

    # A name blocked in the registry is refused by every worker, and kicked where held.
    survivor = "blockme"
    clients[survivor] = await stack.openssh_tunnel(workers.router, alice, survivor, app.port)
    blocked = await admin.cli("block", "name", survivor)
    assert blocked.returncode == 0, blocked.stderr
    assert await clients[survivor].wait_exit() != 0
    await admin.wait_tunnels(left)
    for _ in range(2):  # whichever worker takes the connection
        again = await stack.openssh_tunnel(workers.router, alice, survivor, app.port, wait=False)
        assert await again.wait_exit() != 0
    assert (await admin.cli("unblock", "name", survivor)).returncode == 0
    await stack.openssh_tunnel(workers.router, alice, survivor, app.port)
    assert not (workers.router.state_dir / "blocks.json").exists()  # kept in the registry

    # A drain through the supervisor reaches every worker (SIGUSR2); they stay up.
    drained = await admin.call("POST", "/api/drain", {})
    assert drained.status_code == 200 and len(drained.json()["draining"]) == 2
    for n in (1, 2):
        await proc.wait_for(rf"event=drain_done .*worker={n}$")
    await admin.wait_tunnels(set())
    assert proc.process.returncode is None
