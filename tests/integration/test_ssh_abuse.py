"""Tunnel clients that misbehave: stuck channels, racing and cancelling names, odd forwards.

OpenSSH behaves; the clients that do not are ``asyncssh_peer`` processes
(asyncssh on asyncio, started like every other process here). Each test ends
by checking that the router logged no traceback.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from pathlib import Path

import trio

from router.ssh.session import MAX_ENV_KEPT

from .conftest import LoggedProcess, Router, Stack, World, public_key_of
from .raw_http import read_to_eof
from .rss import peak_rss_growth_bytes, start_rss_window

MIB = 1024 * 1024

# An upload far larger than any buffer on the way: if it all went through,
# something buffered it.
UPLOAD_BYTES = 200 * MIB
UPLOAD_CHUNK_BYTES = 1 * MIB
# A send that makes no progress for this long: the upload has stalled.
STALL_S = 5.0
# What the router may hold for one stalled upload: the SSH channel window
# (2 MiB), a read chunk (256 KiB), asyncio and TLS buffers, allocator slack.
STALLED_UPLOAD_RSS_BOUND = 32 * MIB
# Env requests of each kind (HOSTMUX_* with 256-byte values, LC_* with 1 KiB ones) one
# session sends: kept, they would take the router ~25 MiB, twice that once decoded.
ENV_FLOOD = 20_000
# What the router may grow by while the flood arrives (packet buffers, allocator slack).
ENV_FLOOD_RSS_BOUND = 6 * MIB
# Reason: 40,000 channel requests, on a loaded 2-core machine.
ENV_FLOOD_TIMEOUT_S = 120.0


async def start_peer(
    stack: Stack, router: Router, keys: list[Path], *mode: str, stdin: int = subprocess.DEVNULL
) -> LoggedProcess:
    known_hosts = router.known_hosts(stack.path("known_hosts"))
    argv = [
        sys.executable, "-m", "tests.integration.asyncssh_peer", "--port", str(router.ssh_port),
        "--known-hosts", str(known_hosts), *(f"--key={key}" for key in keys), *mode,
    ]  # fmt: skip
    return await stack.spawn(f"peer-{mode[0]}", argv, stdin=stdin)


def assert_no_traceback(router: Router) -> None:
    assert router.proc.find(r"Traceback") is None


# --- env requests ------------------------------------------------------------------------


async def test_a_flood_of_env_requests_keeps_a_bounded_env_and_the_tunnel_works(
    stack: Stack,
) -> None:
    router = await stack.start_router()
    key = stack.new_key("flood")
    router.authorize(public_key_of(key))
    window = start_rss_window(router.proc.process.pid)
    peer = await start_peer(stack, router, [key], "env-flood", "flooded", str(ENV_FLOOD))
    said = await peer.wait_for(r"^tunnels-ok (.*)$", timeout_s=ENV_FLOOD_TIMEOUT_S)
    growth = peak_rss_growth_bytes(window)

    # The command on the flooded session ran, and the router kept the first HOSTMUX_*
    # names: the connection's forward became pool member "flood".
    assert json.loads(said[1])["tunnels"][0]["name"] == "flooded"
    refused = await router.proc.wait_for(
        rf"event=ssh_env_refused peer=(\S+) kept=(\d+) limit={MAX_ENV_KEPT} "
    )
    assert int(refused[2]) == MAX_ENV_KEPT
    peer_address = refused[1]
    await router.proc.wait_for(rf"event=pool_env peer={peer_address} member=flood ")
    assert (await router.get("flooded", "/")).text == "flood"
    assert growth < ENV_FLOOD_RSS_BOUND, f"the router grew {growth / MIB:.1f} MiB"

    # One line for the connection, and its count when it goes: every HOSTMUX_* name past
    # the bound (the other names are refused without a count: nothing reads them).
    await peer.stop()
    gone = await router.proc.wait_for(
        rf"event=ssh_disconnect peer={peer_address} .*env_refused=(\d+)"
    )
    assert int(gone[1]) == ENV_FLOOD - (MAX_ENV_KEPT - 2)
    assert sum("event=ssh_env_refused " in line for line in router.proc.lines) == 1
    assert_no_traceback(router)


# --- stuck channels ----------------------------------------------------------------------


async def test_channel_open_never_confirmed_is_504_after_the_connect_timeout(
    stack: Stack,
) -> None:
    router = await stack.start_router(
        "--connect-timeout-s", "1", "--max-pending-channel-opens", "2"
    )
    key = stack.new_key("stuck")
    router.authorize(public_key_of(key))
    peer = await start_peer(stack, router, [key], "never-confirm", "stuck")
    await peer.wait_for(r"forwarding stuck")

    for attempt in range(2):  # the router is no worse for it: the second is the same
        started = trio.current_time()
        with trio.fail_after(30):
            response = await router.get("stuck", "/")
        elapsed = trio.current_time() - started
        assert response.status_code == 504, (attempt, response.text)
        assert response.headers["x-hostmux-error"]
        assert 1.0 <= elapsed < 20.0, elapsed
    # Each unanswered open stays pending in the router (SSH cannot withdraw it):
    # with two pending, the tunnel gets no more until it answers some.
    with trio.fail_after(30):
        refused = await router.get("stuck", "/")
    assert refused.status_code == 502
    assert "not answering" in refused.text
    opens = [line for line in peer.lines if "not answering" in line]
    assert len(opens) == 2  # it did see the two opens, and no third
    assert_no_traceback(router)


async def test_channel_confirmed_after_the_connect_timeout_is_closed_at_once(
    stack: Stack,
) -> None:
    """The browser already got its 504: a late channel must not live on in the router."""
    router = await stack.start_router("--connect-timeout-s", "1")
    key = stack.new_key("late")
    router.authorize(public_key_of(key))
    peer = await start_peer(stack, router, [key], "late-confirm", "late", stdin=subprocess.PIPE)
    await peer.wait_for(r"forwarding late")
    with trio.fail_after(30):
        response = await router.get("late", "/")
    assert response.status_code == 504
    await peer.wait_for(r"waiting for a line on stdin")
    assert peer.process.stdin is not None
    await peer.process.stdin.send_all(b"confirm\n")
    await peer.wait_for(r"^confirmed$")
    await peer.wait_for(r"channel closed by the router")
    assert_no_traceback(router)


async def test_an_open_refused_before_the_client_confirmed_any_is_tried_again_once(
    stack: Stack,
) -> None:
    """A client registers a forward's listener a loop turn after reading the grant
    (asyncssh): an open that arrives with the grant is refused, the next succeeds. So a
    refusal before any open was confirmed is retried once; later refusals are answers."""
    router = await stack.start_router()
    key = stack.new_key("refuser")
    router.authorize(public_key_of(key))

    # Open 1 refused, its retry (open 2) accepted; open 3 refused: the forward has
    # confirmed one, so that refusal is the answer (no retry); open 4 accepted.
    peer = await start_peer(stack, router, [key], "refuse", "late", "once", "1,3")
    await peer.wait_for(r"forwarding late")
    first = await router.get("late", "/")
    assert (first.status_code, first.text) == (200, "once")
    await router.proc.wait_for(r"event=channel_open_retried channel=channel:late ")
    refused = await router.get("late", "/")
    assert refused.status_code == 502
    assert "refused on purpose" in refused.text
    assert (await router.get("late", "/")).text == "once"
    assert [line for line in peer.lines if line.startswith("open ")] == [
        "open 1 refused", "open 2 accepted", "open 3 refused", "open 4 accepted",
    ]  # fmt: skip

    # A client that refuses the retry too is answered with 502, and the forward is
    # settled: its next refusal is not retried either.
    down = await start_peer(stack, router, [key], "refuse", "down", "never", "1,2,3")
    await down.wait_for(r"forwarding down")
    assert (await router.get("down", "/")).status_code == 502
    assert (await router.get("down", "/")).status_code == 502
    assert (await router.get("down", "/")).text == "never"
    assert [line for line in down.lines if line.startswith("open ")] == [
        "open 1 refused", "open 2 refused", "open 3 refused", "open 4 accepted",
    ]  # fmt: skip
    retried = [line for line in router.proc.lines if "event=channel_open_retried " in line]
    assert len(retried) == 2
    assert_no_traceback(router)


async def test_tunnel_client_that_never_reads_stalls_an_upload_in_bounded_memory(
    stack: Stack,
) -> None:
    router = await stack.start_router("--response-timeout-s", "3")
    app = await stack.start_app()
    key = stack.new_key("sink")
    router.authorize(public_key_of(key))
    peer = await start_peer(stack, router, [key], "never-read", "sink")
    await peer.wait_for(r"forwarding sink")
    await stack.openssh_tunnel(router, key, "good", app.port)

    window = start_rss_window(router.proc.process.pid)
    sent = 0
    async with await trio.open_tcp_stream("127.0.0.1", router.http_port) as browser:
        await browser.send_all(
            b"POST /upload HTTP/1.1\r\nHost: sink.localhost\r\n"
            b"Content-Length: " + str(UPLOAD_BYTES).encode() + b"\r\n\r\n"
        )
        chunk = b"u" * UPLOAD_CHUNK_BYTES
        with trio.fail_after(120):
            while sent < UPLOAD_BYTES:
                try:
                    with trio.move_on_after(STALL_S) as stalled:
                        await browser.send_all(chunk)
                except trio.BrokenResourceError:
                    break  # the router ended it first (its timeout for the app)
                if stalled.cancelled_caught:
                    break  # the browser gives up: nothing moved for STALL_S
                sent += len(chunk)
        await peer.wait_for(r"channel accepted; not reading")
        growth = peak_rss_growth_bytes(window)
    print(f"stalled upload: sent {sent / MIB:.1f} MiB, router RSS growth {growth / MIB:.1f} MiB")
    assert sent < UPLOAD_BYTES / 4  # back-pressure reached the browser
    assert growth < STALLED_UPLOAD_RSS_BOUND

    # The router gives the stuck request up (the app stopped taking the body) ...
    await router.proc.wait_for(
        r"event=request .*name=sink .*status=504 .*note=\"request body: app not reading\""
    )
    # ... and serves everyone else as before.
    response = await router.get("good", "/bytes?n=1000")
    assert response.status_code == 200
    assert len(response.content) == 1000
    assert_no_traceback(router)


# --- names ---------------------------------------------------------------------------------


async def test_two_keys_racing_for_a_name_exactly_one_wins_every_time(stack: Stack) -> None:
    router = await stack.start_router()
    key_a, key_b = stack.new_key("racer-a"), stack.new_key("racer-b")
    router.authorize(public_key_of(key_a))
    router.authorize(public_key_of(key_b))
    rounds = 20
    peer = await start_peer(stack, router, [key_a, key_b], "race", "race", str(rounds))
    await peer.wait_for(r"race done")

    winners: dict[str, int] = {}
    for number in range(rounds):
        result = await peer.wait_for(rf"round {number} name=(\S+) won=(\S+) odd=(\d+)")
        name, won, odd = result[1], result[2], int(result[3])
        assert won in ("A", "B"), result[0]  # exactly one, never none or both
        assert odd == 0, result[0]  # the loser was refused, nothing stranger
        response = await router.get(name, "/")  # a connection serves one Host: one each
        assert response.status_code == 200
        assert response.text == won  # the URL serves the winner
        winners[won] = winners.get(won, 0) + 1
    ups = [line for line in router.proc.lines if "event=tunnel_up name=race-" in line]
    assert len(ups) == rounds
    print(f"race winners: {winners}")
    assert_no_traceback(router)


async def test_a_client_cannot_cancel_another_clients_forward(stack: Stack) -> None:
    router = await stack.start_router()
    owner, other = stack.new_key("owner"), stack.new_key("other")
    router.authorize(public_key_of(owner))
    router.authorize(public_key_of(other))
    serving = await start_peer(stack, router, [owner], "serve", "mine", "owner")
    await serving.wait_for(r"forwarding mine")
    assert (await router.get("mine", "/")).text == "owner"

    mark = len(router.proc.lines)
    canceller = await start_peer(stack, router, [other], "cancel", "mine")
    assert await canceller.wait_exit() == 0
    await canceller.wait_for(r"^cancel refused$")  # answered "failure", not an error
    assert router.proc.find(r"event=tunnel_down name=mine", start=mark) is None
    response = await router.get("mine", "/")
    assert response.status_code == 200
    assert response.text == "owner"
    assert serving.process.returncode is None
    assert_no_traceback(router)


async def test_stream_local_forwards_outside_the_clients_names_are_refused(
    world: World,
) -> None:
    stack, router, app = world.stack, world.router, world.app
    limited = stack.new_key("limited")
    router.authorize(public_key_of(limited), 'permitlisten="lab-*"')
    socket_path = stack.tmp / "s.sock"  # what a DIT4C client asks for; never bound
    for label, key in (("plain", world.key), ("limited", limited)):
        mark = len(router.proc.lines)
        argv = stack.ssh_argv(
            router, key, "-N", "-R", f"{socket_path}:127.0.0.1:{app.port}",
            "tunnel@127.0.0.1",
        )  # fmt: skip
        refused = await stack.spawn(f"ssh-streamlocal-{label}", argv)
        assert await refused.wait_exit() != 0
        await refused.wait_for(r"remote port forwarding failed")
        await router.proc.wait_for(
            r"event=forward_refused .*reason=.*stream-local forwards are for portal instances",
            start=mark,
        )
    assert router.proc.find(r"event=tunnel_up") is None
    assert not await trio.Path(socket_path).exists()  # nothing is bound, ever
    assert_no_traceback(router)


async def test_dynamic_forward_is_refused(world: World) -> None:
    """``ssh -D``: a SOCKS request becomes a direct-tcpip channel, which is refused."""
    stack, router, app = world.stack, world.router, world.app
    socks_port = free_loopback_port()
    argv = stack.ssh_argv(router, world.key, "-v", "-N", "-D", f"127.0.0.1:{socks_port}",
                          "tunnel@127.0.0.1")  # fmt: skip
    ssh = await stack.spawn("ssh-D", argv)
    await ssh.wait_for(rf"Local forwarding listening on 127\.0\.0\.1 port {socks_port}")
    # OpenSSH logs that between bind() and listen(): the channel comes after listen().
    await ssh.wait_for(r"new port-listener")
    mark = len(router.proc.lines)
    with trio.fail_after(30):
        async with await trio.open_tcp_stream("127.0.0.1", socks_port) as socks:
            await socks.send_all(b"\x05\x01\x00")  # SOCKS5, one method: no authentication
            assert await receive_exactly(socks, 2) == b"\x05\x00"
            await socks.send_all(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                                 + struct.pack("!H", app.port))  # fmt: skip
            reply = await read_to_eof(socks)
    assert not reply.startswith(b"\x05\x00")  # never "succeeded"
    await router.proc.wait_for(r"event=refused .*what=\"direct-tcpip", start=mark)
    await ssh.wait_for(r"open failed")
    assert_no_traceback(router)


# --- host keys -----------------------------------------------------------------------------


async def test_listener_and_openssh_refuse_a_router_whose_host_key_changed(
    world: World,
) -> None:
    stack, first, app, key = world.stack, world.router, world.app, world.key
    known_hosts = first.known_hosts(stack.path("known_hosts-pinned"))
    listener_argv = stack.listener_argv(first, key, app.port)
    listener_argv[listener_argv.index("--known-hosts") + 1] = str(known_hosts)
    listener = await stack.spawn("listener", [*listener_argv, "--name", "pinned"])
    await listener.wait_for(r"event=tunnel_up name=pinned ")

    assert await first.proc.stop() == 0
    mark = len(listener.lines)
    await listener.wait_for(r"event=(tunnel_down|tunnel_failed)", start=mark)
    # Another router on the same SSH port, with its own state: another host key.
    impostor = await stack.start_router(ports=(first.ssh_port, 0, 0))
    impostor.authorize(public_key_of(key))
    assert impostor.host_key_fingerprint != first.host_key_fingerprint

    first_refusal = await listener.wait_for(
        r"level=error event=tunnel_failed .*host key is not trusted", start=mark
    )
    index = listener.lines.index(first_refusal.string)
    # It keeps refusing on every retry (back-off is at most 2 s here) ...
    await listener.wait_for(
        r"level=error event=tunnel_failed .*host key is not trusted", start=index + 1
    )
    # ... and never holds a tunnel through the impostor, nor prints a new URL.
    assert listener.find(r"event=tunnel_up", start=mark) is None
    assert impostor.proc.find(r"event=tunnel_up") is None
    assert impostor.proc.find(r"event=ssh_connect ") is None

    argv = [
        "ssh", "-F", "none", "-p", str(impostor.ssh_port), "-i", str(key),
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes",
        "-N", "-R", f"pinned:80:127.0.0.1:{app.port}", "tunnel@127.0.0.1",
    ]  # fmt: skip
    ssh = await stack.spawn("ssh-pinned", argv)
    assert await ssh.wait_exit() != 0
    await ssh.wait_for(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed")
    assert impostor.proc.find(r"event=tunnel_up") is None
    assert_no_traceback(impostor)
    assert_no_traceback(first)
    with_impostor = await impostor.get("pinned", "/")
    assert with_impostor.status_code == 404  # the name was never claimed there


# --- helpers -------------------------------------------------------------------------------


def free_loopback_port() -> int:
    """A port that was free a moment ago (ssh -D needs a number, not 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def receive_exactly(stream: trio.SocketStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            break
        data += chunk
    return data
