"""The listener outlives the router; bad configuration fails fast and clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from .conftest import World, websocket_and_stream


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
    # An idle kept-alive connection parks without a task (``HttpRelay``): at most its
    # own task, if it has not parked yet, is counted.
    assert idle["tasks"] <= busy["tasks"] <= idle["tasks"] + 1
    assert busy["fds"] > idle["fds"]


async def test_tunnel_client_killed_mid_response_cuts_it_short_without_a_traceback(
    world: World,
) -> None:
    # Found by bench/soak.py: asyncssh's ConnectionLost (not an OSError) escaped the relay.
    stack, router, app, key = world.stack, world.router, world.app, world.key
    victim = await stack.openssh_tunnel(router, key, "victim", app.port)
    size = 256 * 1024 * 1024
    async with trio.open_nursery() as nursery:
        # The TLS stream is ours to close: trio-websocket leaves it open when the peer drops.
        tls, ws = await websocket_and_stream(nursery, router, "victim")
        with trio.fail_after(60):
            await ws.send_message("before")
            assert await ws.get_message() == "before"
            received: list[int] = []
            async with router.client() as client:
                request = router.request(client, "GET", "victim", f"/bytes?n={size}&seed=k")
                response = await client.send(request, stream=True)
                assert response.status_code == 200

                async def read_killing_the_client() -> None:
                    async for chunk in response.aiter_raw():
                        if not received:
                            victim.process.kill()  # SIGKILL, mid-response
                        received.append(len(chunk))

                with pytest.raises(httpx.RemoteProtocolError):
                    await read_killing_the_client()
                await response.aclose()
            assert 0 < sum(received) < size
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
            await tls.aclose()
    await router.proc.wait_for(rf"event=request .*name=victim .*target=\"?/bytes\?n={size}")
    await router.proc.wait_for(r"event=request .*name=victim .*target=/ws status=101")
    # One more full request, so anything the killed connections logged is in by now.
    await stack.openssh_tunnel(router, key, "after", app.port)
    assert (await router.get("after", "/bytes?n=16")).status_code == 200
    assert not [line for line in router.proc.lines if "Traceback" in line or "level=error" in line]
