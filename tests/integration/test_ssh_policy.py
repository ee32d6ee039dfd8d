"""What tunnel clients may and may not do over SSH, with real OpenSSH clients."""

from __future__ import annotations

import json
import subprocess

from .conftest import Stack, World, public_key_of


async def test_name_belongs_to_its_key_and_the_owner_may_take_over(
    world: World,
) -> None:
    stack, router, app, key_a = world.stack, world.router, world.app, world.key
    key_b = stack.new_key("mallory")
    router.authorize(public_key_of(key_b))
    first = await stack.openssh_tunnel(router, key_a, "owned", app.port)

    mark = len(router.proc.lines)
    thief = await stack.openssh_tunnel(router, key_b, "owned", app.port, wait=False)
    assert await thief.wait_exit() != 0
    await thief.wait_for(r"remote port forwarding failed")
    await router.proc.wait_for(
        r"event=forward_refused .*reason=.*in use by another key", start=mark
    )

    # The owner reconnects while its old connection is still up: the new one wins at once.
    mark = len(router.proc.lines)
    second = await stack.openssh_tunnel(router, key_a, "owned", app.port)
    await router.proc.wait_for(
        r"event=tunnel_up name=owned .*replaced=127\.0\.0\.1:\d+", start=mark
    )
    assert (await router.get("owned", "/")).status_code == 200
    # The replaced connection going away does not take the name with it.
    await first.stop()
    assert (await router.get("owned", "/")).status_code == 200
    assert second.process.returncode is None


async def test_permitlisten_limits_a_key_to_its_names(stack: Stack) -> None:
    router = await stack.start_router()
    app = await stack.start_app()
    key = stack.new_key("limited")
    router.authorize(public_key_of(key), 'permitlisten="lab-*"')
    refused = await stack.openssh_tunnel(router, key, "other", app.port, wait=False)
    assert await refused.wait_exit() != 0
    await router.proc.wait_for(
        r"event=forward_refused .*listen=other:80 reason=.*may only hold lab-\*"
    )
    await stack.openssh_tunnel(router, key, "lab-1", app.port)
    reserved = await stack.openssh_tunnel(router, key, "admin", app.port, wait=False)
    assert await reserved.wait_exit() != 0


async def test_invalid_and_reserved_names_are_refused(
    world: World,
) -> None:
    stack, router, app, key = world.stack, world.router, world.app, world.key
    for name, reason in (("admin", "is reserved"), ("-bad-", "not a valid name")):
        proc = await stack.openssh_tunnel(router, key, name, app.port, wait=False)
        assert await proc.wait_exit() != 0
        await router.proc.wait_for(rf"event=forward_refused .*reason=.*{reason}")


async def test_session_prints_the_random_url_and_runs_nothing(
    world: World,
) -> None:
    stack, router, app, key = world.stack, world.router, world.app, world.key
    argv = stack.ssh_argv(router, key, "-R", f"80:127.0.0.1:{app.port}", "tunnel@127.0.0.1")
    ssh = await stack.spawn("ssh-session", argv, stdin=subprocess.PIPE)
    match = await ssh.wait_for(rf"Forwarding (https://([a-z0-9]+)\.localhost:{router.https_port})")
    assert (await router.get(match[2], "/")).status_code == 200

    assert ssh.process.stdin is not None
    await ssh.process.stdin.send_all(b"id; touch /tmp/hostmux-must-not-exist\n")
    await ssh.wait_for(r"This is a tunnel, not a shell: nothing you type runs")
    await ssh.process.stdin.send_all(b"\x03")  # Ctrl-C closes the session, and ssh with it
    assert await ssh.wait_exit() == 0
    assert ssh.find(r"uid=") is None


async def test_exec_subsystem_and_local_forwards_are_refused(
    world: World,
) -> None:
    stack, router, app, key = world.stack, world.router, world.app, world.key
    exec_proc = await stack.spawn("ssh-exec", stack.ssh_argv(router, key, "tunnel@127.0.0.1", "id"))
    assert await exec_proc.wait_exit() != 0
    await exec_proc.wait_for(r"exec request failed")
    assert exec_proc.find(r"uid=") is None

    sftp = await stack.spawn(
        "ssh-sftp", stack.ssh_argv(router, key, "-s", "tunnel@127.0.0.1", "sftp")
    )
    assert await sftp.wait_exit() != 0
    await sftp.wait_for(r"subsystem request failed")

    builtin = await stack.spawn("ssh-help", stack.ssh_argv(router, key, "tunnel@127.0.0.1", "help"))
    assert await builtin.wait_exit() == 0
    await builtin.wait_for(r"hostmux tunnel router")
    await builtin.wait_for(r"tunnels \[--json\] +this connection's tunnels")

    # tunnels lists the asking connection's tunnels only, and says so.
    tunnels = await stack.spawn(
        "ssh-tunnels", stack.ssh_argv(router, key, "tunnel@127.0.0.1", "tunnels")
    )
    assert await tunnels.wait_exit() == 0
    await tunnels.wait_for(r"^no tunnels on this connection$")
    listed = await stack.spawn(
        "ssh-tunnels-json", stack.ssh_argv(router, key, "tunnel@127.0.0.1", "tunnels --json")
    )
    assert await listed.wait_exit() == 0
    report = json.loads((await listed.wait_for(r"^\{.*\}$"))[0])
    assert report == {"scope": "connection", "router": None, "tunnels": [], "refused": []}

    # -W opens the same direct-tcpip channel as -L, without a local port to race for.
    mark = len(router.proc.lines)
    stdio = await stack.spawn(
        "ssh-W",
        stack.ssh_argv(router, key, "-W", f"127.0.0.1:{app.port}", "tunnel@127.0.0.1"),
    )
    assert await stdio.wait_exit() != 0
    await stdio.wait_for(r"open failed")
    await router.proc.wait_for(r"event=refused .*what=\"direct-tcpip", start=mark)


async def test_key_exchange_is_strict_and_ciphers_are_aes_gcm(
    world: World,
) -> None:
    """Terrapin (CVE-2023-48795): both sides must agree on strict KEX; only AES-GCM is offered."""
    stack, router, key = world.stack, world.router, world.key
    ssh = await stack.spawn("ssh-vvv", stack.ssh_argv(router, key, "-vvv", "x@127.0.0.1", "help"))
    assert await ssh.wait_exit() == 0
    await ssh.wait_for(r"will use strict KEX ordering")
    await ssh.wait_for(r"kex: server->client cipher: aes(128|256)-gcm@openssh\.com")
    await ssh.wait_for(r"kex: client->server cipher: aes(128|256)-gcm@openssh\.com")
    chacha = await stack.spawn(
        "ssh-chacha",
        stack.ssh_argv(router, key, "-c", "chacha20-poly1305@openssh.com", "x@127.0.0.1", "help"),
    )
    assert await chacha.wait_exit() != 0  # not offered: the client must use AES-GCM
