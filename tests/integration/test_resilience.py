"""The listener outlives the router; bad configuration fails fast and clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from .conftest import World


async def test_listener_reconnects_after_router_restart_and_keeps_its_name(
    world: World,
) -> None:
    stack, router, app, key = world.stack, world.router, world.app, world.key
    listener = await stack.listener(router, key, app.port, "--name", "steady")
    await listener.wait_for(r"event=tunnel_up name=steady ")

    assert await router.proc.stop() == 0
    await router.proc.wait_for(r"event=router_stopped")
    mark = len(listener.lines)
    await listener.wait_for(r"event=(tunnel_down|tunnel_failed)", start=mark)

    restarted = await stack.start_router(
        state_dir=router.state_dir, ports=(router.ssh_port, router.https_port, router.http_port)
    )
    assert restarted.host_key_fingerprint == router.host_key_fingerprint
    await listener.wait_for(r"event=tunnel_up name=steady ", start=mark)
    assert (await restarted.get("steady", "/")).status_code == 200


async def test_listener_refuses_an_unknown_router_host_key(
    world: World,
) -> None:
    stack, router, app, key = world.stack, world.router, world.app, world.key
    listener = await stack.listener(
        router,
        key,
        app.port,
        "--known-hosts",
        os.devnull,
    )
    await listener.wait_for(r"level=error event=tunnel_failed .*host key is not trusted")
    assert router.proc.find(r"event=tunnel_up") is None


BAD_CONFIGS = {
    "not toml": "this is = = not toml",
    "unknown option": 'domian = "example.org"',
    "wrong type": "ssh_listen = 2222",
    "bad address": 'ssh_listen = ["nowhere"]',
    "bad domain": 'domain = "Not A Domain"',
    "negative timeout": "header_timeout_s = -1",
}


@pytest.mark.parametrize("text", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, text: str) -> None:
    config = tmp_path / "router.toml"
    config.write_text(text + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(config), "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hostmux-router: error: ")
    assert "Traceback" not in result.stderr


def test_bad_authorized_keys_line_is_named(tmp_path: Path) -> None:
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text("ssh-ed25519 AAAAnotbase64 someone\n")
    result = subprocess.run(
        [sys.executable, "-m", "router", "--state-dir", str(tmp_path),
         "--authorized-keys-file", str(keys_file), "--ssh-listen", "127.0.0.1:0",
         "--https-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{keys_file}:1: not a valid authorized_keys line" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigusr1_logs_live_task_and_descriptor_counts(world: World) -> None:
    stack, router, app, key = world.stack, world.router, world.app, world.key
    await stack.openssh_tunnel(router, key, "counted", app.port)
    pid = router.proc.process.pid

    async def stats() -> dict[str, int]:
        mark = len(router.proc.lines)
        os.kill(pid, signal.SIGUSR1)
        match = await router.proc.wait_for(
            r"event=stats tasks=(\d+) fds=(\d+) threads=(\d+) connections=(\d+)", start=mark
        )
        names = ("tasks", "fds", "threads", "connections")
        return dict(zip(names, map(int, match.groups()), strict=True))

    idle = await stats()
    assert idle["tasks"] >= 1
    assert idle["connections"] == 0
    async with await trio.open_tcp_stream("127.0.0.1", router.http_port) as held:
        # One answered request: the router has accepted the connection and keeps it alive.
        await held.send_all(b"GET /bytes?n=16 HTTP/1.1\r\nHost: counted.localhost\r\n\r\n")
        assert (await held.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        busy = await stats()
    assert busy["connections"] == 1
    assert busy["tasks"] > idle["tasks"]
    assert busy["fds"] > idle["fds"]
