"""TCP tunnels (``ssh -R tcp:PORT:HOST:PORT``) with real OpenSSH clients and real sockets."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import struct
import subprocess
from functools import partial
from pathlib import Path

import trio

from .cluster_world import ClusterCA, holders, link_line, start_member
from .conftest import LoggedProcess, Router, Stack, public_key_of
from .redis_server import RedisServer
from .test_operations import METRICS, get, promtool_check, sample

MIB = 1024 * 1024


def free_port_block(size: int) -> int:
    """The first of ``size`` consecutive loopback ports that can be bound now."""
    for _ in range(200):
        first = random.randrange(30000, 32000 - size)
        socks = []
        try:
            for port in range(first, first + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no free block of loopback ports")


async def start_tcp_router(stack: Stack, size: int, *extra: str) -> tuple[Router, range]:
    first = free_port_block(size)
    ports = range(first, first + size)
    router = await stack.start_router(
        "--tcp-port-range", f"{first}-{first + size - 1}", "--tcp-listen-host", "127.0.0.1",
        "--name-reservation-s", "600", *extra,
    )  # fmt: skip
    return router, ports


async def refused_at_accept(port: int) -> None:
    await refused_at_accept_on("127.0.0.1", port)


async def refused_at_accept_on(host: str, port: int) -> None:
    """Connect to ``port`` and see it closed or reset (the reset may come at connect)."""
    with trio.fail_after(30), contextlib.suppress(OSError, trio.BrokenResourceError):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            assert await stream.receive_some(1) == b""


async def echo_server(nursery: trio.Nursery) -> int:
    """An echo app on loopback: echoes all, then half-closes once the client has."""

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def tcp_tunnel(
    stack: Stack, router: Router, key: Path, target: int, *forwards: str
) -> LoggedProcess:
    """``ssh -R tcp:PORT:127.0.0.1:TARGET ...`` with a session (it prints the forwards)."""
    args: list[str] = []
    for forward in forwards or ("tcp:0",):
        args += ["-R", f"{forward}:127.0.0.1:{target}"]
    argv = stack.ssh_argv(router, key, *args, "tunnel@127.0.0.1")
    return await stack.spawn("ssh-tcp", argv, stdin=subprocess.PIPE)


async def test_tcp_tunnel_relays_10_mib_both_ways_and_half_closes(stack: Stack) -> None:
    router, ports = await start_tcp_router(stack, 4)
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    target = await echo_server(stack.nursery)
    ssh = await tcp_tunnel(stack, router, key, target)
    match = await ssh.wait_for(r"Forwarding tcp://localhost:(\d+)")
    port = int(match[1])
    assert port in ports

    payload = os.urandom(10 * MIB)
    received = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(60):
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                for at in range(0, len(payload), 256 * 1024):
                    await stream.send_all(payload[at : at + 256 * 1024])
                await stream.send_eof()  # half-close: the echo app sees EOF, answers the rest

            nursery.start_soon(send)
            while data := await stream.receive_some(256 * 1024):
                received += data
    # Byte for byte, and the app's EOF came back after its last byte (half-close both ways).
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    await router.proc.wait_for(
        rf"event=tcp_connection port={port} .*outcome=closed bytes_in={10 * MIB} "
        rf"bytes_out={10 * MIB}"
    )


async def test_port_belongs_to_its_key_and_comes_back_after_a_reconnect(stack: Stack) -> None:
    router, _ = await start_tcp_router(stack, 4)
    alice, mallory = stack.new_key("alice"), stack.new_key("mallory")
    router.authorize(public_key_of(alice))
    router.authorize(public_key_of(mallory))
    target = await echo_server(stack.nursery)
    first = await tcp_tunnel(stack, router, alice, target)
    port = int((await first.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1])

    thief = await tcp_tunnel(stack, router, mallory, target, f"tcp:{port}")
    assert await thief.wait_exit() != 0
    await router.proc.wait_for(rf"event=forward_refused .*reason=.*port {port} is in use by")

    await first.stop()
    await router.proc.wait_for(rf"event=tcp_tunnel_down port={port} ")
    # Reserved for alice now: mallory still cannot take it.
    mark = len(router.proc.lines)
    thief = await tcp_tunnel(stack, router, mallory, target, f"tcp:{port}")
    assert await thief.wait_exit() != 0
    await router.proc.wait_for(
        rf"event=forward_refused .*reason=.*port {port} is in use by another", start=mark
    )
    # Alice asks for any port and gets hers back.
    again = await tcp_tunnel(stack, router, alice, target)
    assert int((await again.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1]) == port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"ping")
        assert await stream.receive_some(4) == b"ping"


async def test_limits_and_refusals_are_said_in_the_session(stack: Stack) -> None:
    router, ports = await start_tcp_router(stack, 2, "--max-tcp-ports-per-key", "1")
    alice, bob, carol = stack.new_key("alice"), stack.new_key("bob"), stack.new_key("carol")
    for key in (alice, bob, carol):
        router.authorize(public_key_of(key))
    target = await echo_server(stack.nursery)
    # Per key: the second port of one connection is refused, the first stays.
    ssh = await tcp_tunnel(
        stack, router, alice, target, f"tcp:{ports.start}", f"tcp:{ports.start + 1}"
    )
    assert await ssh.wait_exit() != 0  # ExitOnForwardFailure
    await router.proc.wait_for(r"event=forward_refused .*reason=.*already holds 1 TCP ports")

    ssh = await tcp_tunnel(stack, router, alice, target)
    await ssh.wait_for(r"Forwarding tcp://localhost:\d+")
    ssh_b = await tcp_tunnel(stack, router, bob, target)
    await ssh_b.wait_for(r"Forwarding tcp://localhost:\d+")
    # The range is full.
    refused = await tcp_tunnel(stack, router, carol, target)
    assert await refused.wait_exit() != 0
    await router.proc.wait_for(r"event=forward_refused .*reason=.*no free TCP port left")
    # Outside the range, and the reserved name.
    outside = ports.stop + 5
    refused = await tcp_tunnel(stack, router, carol, target, f"tcp:{outside}")
    assert await refused.wait_exit() != 0
    await router.proc.wait_for(rf"reason=.*port {outside} is outside this router's TCP ports")
    refused = await tcp_tunnel(stack, router, carol, target, "tcp.localhost:80")
    assert await refused.wait_exit() != 0
    await router.proc.wait_for(r"event=forward_refused .*reason=.*'tcp' is reserved")


async def test_tcp_tunnels_are_off_without_a_range(stack: Stack) -> None:
    router = await stack.start_router()
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    ssh = await tcp_tunnel(stack, router, key, 9)
    assert await ssh.wait_exit() != 0
    await router.proc.wait_for(r"event=forward_refused .*reason=.*TCP tunnels are off")


async def test_a_client_that_never_reads_is_held_back_then_closed_when_idle(
    stack: Stack,
) -> None:
    router, _ = await start_tcp_router(stack, 1, "--tcp-idle-timeout-s", "2")
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    sent = [0]
    done = trio.Event()

    async def flood(stream: trio.SocketStream) -> None:
        chunk = b"x" * 65536
        try:
            async with stream:
                while sent[0] < 512 * MIB:
                    await stream.send_all(chunk)
                    sent[0] += len(chunk)
        except trio.BrokenResourceError:
            pass
        finally:
            done.set()

    listeners = await stack.nursery.start(partial(trio.serve_tcp, flood, 0, host="127.0.0.1"))
    target = int(listeners[0].socket.getsockname()[1])
    ssh = await tcp_tunnel(stack, router, key, target)
    port = int((await ssh.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))  # and never read
    try:
        await router.proc.wait_for(rf"event=tcp_connection port={port} .*outcome=idle")
        with trio.fail_after(30):
            await done.wait()  # the app's connection ended with the client's
    finally:
        sock.close()
    # Held back by the client's window: what the router, the SSH channel and the kernel
    # buffers took is bounded, far from the 512 MiB the app tried to send.
    assert sent[0] < 64 * MIB


async def read_proxy_v2(stream: trio.SocketStream) -> tuple[bytes, tuple[str, int, str, int]]:
    """The test's own PROXY v2 reader (TCP over IPv4 only): the header's addresses and
    the bytes that came after it."""
    buffer = b""
    while len(buffer) < 16:
        buffer += await stream.receive_some(65536)
    assert buffer[:12] == b"\r\n\r\n\x00\r\nQUIT\n", buffer[:16]
    version_command, family, length = struct.unpack("!BBH", buffer[12:16])
    assert (version_command, family, length) == (0x21, 0x11, 12)
    while len(buffer) < 16 + length:
        buffer += await stream.receive_some(65536)
    src, dst, src_port, dst_port = struct.unpack("!4s4sHH", buffer[16:28])
    addresses = (socket.inet_ntoa(src), src_port, socket.inet_ntoa(dst), dst_port)
    return buffer[28:], addresses


async def test_proxy_protocol_v2_tells_the_backend_the_client_address(stack: Stack) -> None:
    router, _ = await start_tcp_router(stack, 1, "--tcp-proxy-protocol")
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    seen: list[tuple[str, int, str, int]] = []

    async def backend(stream: trio.SocketStream) -> None:
        async with stream:
            rest, addresses = await read_proxy_v2(stream)
            seen.append(addresses)
            await stream.send_all(rest)
            while data := await stream.receive_some(65536):
                await stream.send_all(data)

    listeners = await stack.nursery.start(partial(trio.serve_tcp, backend, 0, host="127.0.0.1"))
    target = int(listeners[0].socket.getsockname()[1])
    ssh = await tcp_tunnel(stack, router, key, target)
    port = int((await ssh.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        client_port = stream.socket.getsockname()[1]
        await stream.send_all(b"hello")
        received = b""
        with trio.fail_after(30):
            while len(received) < 5:
                received += await stream.receive_some(65536)
    assert received == b"hello"  # the header went to the backend only
    assert seen == [("127.0.0.1", client_port, "127.0.0.1", port)]


async def test_listener_tcp_opens_a_tcp_tunnel_and_gets_its_port_back(stack: Stack) -> None:
    router, ports = await start_tcp_router(stack, 4)
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    target = await echo_server(stack.nursery)
    listener = await stack.listener(router, key, target, "--tcp", "0")
    port = int((await listener.wait_for(r"^tcp://localhost:(\d+)$"))[1])
    assert port in ports
    payload = os.urandom(MIB)
    received = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(30):
        async with stream:
            await stream.send_all(payload)
            await stream.send_eof()
            while data := await stream.receive_some(65536):
                received += data
    assert received == payload
    # A new listener process with the same key gets the same port back.
    await listener.stop()
    await router.proc.wait_for(rf"event=tcp_tunnel_down port={port} ")
    again = await stack.listener(router, key, target, "--tcp", "0")
    assert int((await again.wait_for(r"^tcp://localhost:(\d+)$"))[1]) == port


async def test_port_rules_refuse_other_sources_at_accept(stack: Stack) -> None:
    first = free_port_block(2)
    config = stack.path("router.toml")
    config.write_text(
        f'tcp_port_range = "{first}-{first + 1}"\ntcp_listen_host = "127.0.0.1"\n'
        f'[[tcp_port_rules]]\nports = [{first}]\nallow_cidrs = ["10.0.0.0/8"]\n'
        f'[[tcp_port_rules]]\nports = [{first + 1}]\nallow_cidrs = ["127.0.0.0/8"]\n'
    )
    router = await stack.start_router("--config", str(config))
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    target = await echo_server(stack.nursery)
    ssh = await tcp_tunnel(stack, router, key, target, f"tcp:{first}", f"tcp:{first + 1}")
    await ssh.wait_for(rf"Forwarding tcp://localhost:{first + 1}")
    await router.proc.wait_for(rf"event=tcp_tunnel_up port={first} ")

    await refused_at_accept(first)
    await router.proc.wait_for(
        rf"event=tcp_refused port={first} peer=127\.0\.0\.1 reason=\"source not allowed\""
    )
    allowed = await trio.open_tcp_stream("127.0.0.1", first + 1)
    async with allowed:
        await allowed.send_all(b"ok?")
        with trio.fail_after(30):
            assert await allowed.receive_some(3) == b"ok?"


async def test_keys_limited_to_names_need_permitlisten_tcp(stack: Stack) -> None:
    router, _ = await start_tcp_router(stack, 2)
    limited, allowed = stack.new_key("limited"), stack.new_key("allowed")
    router.authorize(public_key_of(limited), 'permitlisten="lab-*"')
    router.authorize(public_key_of(allowed), 'permitlisten="lab-*",permitlisten="tcp"')
    target = await echo_server(stack.nursery)
    refused = await tcp_tunnel(stack, router, limited, target)
    assert await refused.wait_exit() != 0
    await router.proc.wait_for(r"event=forward_refused .*reason=.*may not open TCP tunnels")
    ssh = await tcp_tunnel(stack, router, allowed, target)
    await ssh.wait_for(r"Forwarding tcp://localhost:\d+")


async def echo_once(host: str, port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    received = b""
    async with stream:
        await stream.send_all(data)
        await stream.send_eof()
        with trio.fail_after(30):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


async def test_ports_are_owned_across_a_cluster(stack: Stack, redis_server: RedisServer) -> None:
    first = free_port_block(2)
    routers = []
    for router_id, host in (("r1", "127.0.0.1"), ("r2", "127.0.0.2")):
        args = ["--registry", redis_server.url, "--router-id", router_id]
        args += ["--tcp-port-range", f"{first}-{first + 1}", "--tcp-listen-host", host]
        routers.append(await stack.start_router(*args))
    one, two = routers
    alice, mallory = stack.new_key("alice"), stack.new_key("mallory")
    for router in routers:
        router.authorize(public_key_of(alice))
        router.authorize(public_key_of(mallory))
    target = await echo_server(stack.nursery)
    ssh = await tcp_tunnel(stack, one, alice, target)
    port = int((await ssh.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1])
    assert set(holders(redis_server, f"tcp:{port}")) == {"r1"}
    assert await echo_once("127.0.0.1", port, b"one") == b"one"

    # Another key on the other router: refused for that port, given the other one.
    thief = await tcp_tunnel(stack, two, mallory, target, f"tcp:{port}")
    assert await thief.wait_exit() != 0
    await two.proc.wait_for(rf"event=forward_refused .*reason=.*port {port} is in use by")
    other = await tcp_tunnel(stack, two, mallory, target)
    other_port = int((await other.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1])
    assert other_port != port
    assert set(holders(redis_server, f"tcp:{other_port}")) == {"r2"}

    # The owner joins on router 2: both routers serve the port.
    joined = await tcp_tunnel(stack, two, alice, target, f"tcp:{port}")
    await joined.wait_for(rf"Forwarding tcp://localhost:{port}")
    assert set(holders(redis_server, f"tcp:{port}")) == {"r1", "r2"}
    assert await echo_once("127.0.0.2", port, b"two") == b"two"
    # Gone from router 1: its lease is released there.
    await ssh.stop()
    await one.proc.wait_for(rf"event=registry_released_tunnel name=tcp:{port} held=True")
    assert set(holders(redis_server, f"tcp:{port}")) == {"r2"}


async def test_connections_per_ip_count_with_the_front_doors(stack: Stack) -> None:
    router, _ = await start_tcp_router(
        stack, 1, "--max-connections-per-ip", "2", "--metrics-listen", "127.0.0.1:0"
    )
    metrics_port = int(router.proc.find(r"event=router_ready .*" + METRICS)[1])  # type: ignore[index]
    key = stack.new_key("alice")
    router.authorize(public_key_of(key))
    target = await echo_server(stack.nursery)
    ssh = await tcp_tunnel(stack, router, key, target)
    port = int((await ssh.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1])
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    for stream in held:  # both relayed (and counted) before the third comes
        await stream.send_all(b"x")
        with trio.fail_after(30):
            assert await stream.receive_some(1) == b"x"
    await refused_at_accept(port)
    await router.proc.wait_for(rf"event=tcp_refused port={port} .*reason=\"connection limit\"")
    for stream in held:  # one at a time: each logged (and counted) before the next
        mark = len(router.proc.lines)
        await stream.aclose()
        await router.proc.wait_for(
            rf"event=tcp_connection port={port} .*outcome=closed", start=mark
        )
    again = await echo_once("127.0.0.1", port, b"back")  # released: admitted again
    assert again == b"back"
    await router.proc.wait_for(rf"event=tcp_connection port={port} .*bytes_in=4 bytes_out=4")
    text = (await get(metrics_port, "/metrics")).text
    assert await promtool_check(text) == ""
    assert sample(text, "hostmux_tcp_tunnels") == 1
    assert sample(text, "hostmux_tcp_connections_total", outcome="refused_limit") == 1
    assert sample(text, "hostmux_tcp_connections_total", outcome="closed") == 3
    assert sample(text, "hostmux_tcp_bytes_total", direction="in") == 1 + 1 + 4


async def test_every_router_of_a_cluster_serves_the_port_over_the_link(
    stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    first = free_port_block(2)
    ca = ClusterCA.create(tmp_path / "cluster-ca")
    alice = stack.new_key("alice")
    members = []
    for router_id, host in (("r1", "127.0.0.1"), ("r2", "127.0.0.2")):
        tcp = ["--tcp-port-range", f"{first}-{first + 1}", "--tcp-listen-host", host]
        members.append(await start_member(stack, redis_server, ca, router_id, *tcp, keys=(alice,)))
    one, two = members
    target = await echo_server(stack.nursery)
    ssh = await tcp_tunnel(stack, one.router, alice, target)
    port = int((await ssh.wait_for(r"Forwarding tcp://localhost:(\d+)"))[1])
    payload = os.urandom(MIB)
    # Router 2 holds no tunnel: it relays over the router link to router 1.
    assert await echo_once("127.0.0.2", port, payload) == payload
    await two.router.proc.wait_for(
        rf"event=tcp_connection port={port} .*outcome=closed bytes_in={MIB}"
    )
    assert link_line(one, f"tcp:{port}") is not None
    # A port nobody holds is closed at once on every router.
    other = first if port == first + 1 else first + 1
    await refused_at_accept_on("127.0.0.2", other)
    await two.router.proc.wait_for(rf"event=tcp_connection port={other} .*outcome=unavailable")


async def test_the_admin_api_lists_kicks_and_blocks_tcp_tunnels(stack: Stack) -> None:
    from .test_admin import start_admin_router

    first = free_port_block(4)
    router, admin = await start_admin_router(
        stack, "--tcp-port-range", f"{first}-{first + 3}", "--tcp-listen-host", "127.0.0.1",
        "--name-reservation-s", "600",
    )  # fmt: skip
    alice = stack.new_key("alice")
    router.authorize(public_key_of(alice))
    target = await echo_server(stack.nursery)
    ssh = await tcp_tunnel(stack, router, alice, target, f"tcp:{first}")
    await ssh.wait_for(rf"Forwarding tcp://localhost:{first}")
    owner = (await router.proc.wait_for(rf"event=tcp_tunnel_up port={first} .*key=(\S+)"))[1]
    # Listed and kicked like an HTTP tunnel.
    listed = (await admin.call("GET", "/api/tunnels")).json()["tunnels"]
    assert [t["name"] for t in listed] == [f"tcp:{first}"]
    kicked = await admin.call("POST", "/api/kick", {"name": f"tcp:{first}"})
    assert kicked.status_code == 200 and kicked.json()["kicked"] == 1
    assert await ssh.wait_exit() != 0
    # Blocking the key closes its TCP tunnel and refuses its next port.
    ssh = await tcp_tunnel(stack, router, alice, target, f"tcp:{first}")
    await ssh.wait_for(rf"Forwarding tcp://localhost:{first}")
    blocked = await admin.call("POST", "/api/block", {"kind": "key", "value": owner})
    assert blocked.status_code == 200 and blocked.json()["kicked"] == 1, blocked.text
    assert await ssh.wait_exit() != 0
    refused = await tcp_tunnel(stack, router, alice, target, f"tcp:{first + 1}")
    assert await refused.wait_exit() != 0
    await router.proc.wait_for(r"event=forward_refused .*reason=.*this key is blocked")
