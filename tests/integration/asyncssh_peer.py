"""A tunnel client that misbehaves on purpose, in its own process (asyncssh on asyncio).

The integration tests run on trio; asyncssh needs asyncio, so the clients
that do what OpenSSH never would live here and are started as real processes:

    python -m tests.integration.asyncssh_peer MODE --port P --known-hosts F --key K [--key K2] ...

Modes (each prints one line per step on stdout, flushed, for ``wait_for``):

``serve NAME WHO``      holds NAME; every forwarded connection gets a tiny HTTP
                        response whose body is WHO.
``never-confirm NAME``  holds NAME, but never confirms (nor refuses) a channel open
                        (``--label-port 443``: as a TLS passthrough tunnel).
``never-read NAME``     holds NAME, accepts channels and never reads from them.
``late-confirm NAME``   holds NAME; confirms a channel open only when a line
                        arrives on stdin, then reports what the router does with it.
``refuse NAME WHO OPENS`` as ``serve``, but refuses the channel opens whose numbers
                        (counted from 1) are in the comma-separated OPENS; says
                        ``open N refused`` or ``open N accepted`` for each.
``race PREFIX ROUNDS``  two connections (two keys) ask for the same fresh name
                        in the same event-loop tick, ROUNDS times; each serves
                        its own letter (A or B) where it won.
``cancel NAME``         asks the router to cancel NAME's forward, which it does
                        not hold (``cancel-tcpip-forward``).
``env-flood NAME COUNT`` holds NAME as pool member ``flood``, then runs
                        ``tunnels --json`` on a session that first sends
                        HOSTMUX_POOL=1, HOSTMUX_POOL_MEMBER=flood and COUNT
                        ``HOSTMUX_FLOOD_<n>`` (256-byte values) and COUNT ``LC_FLOOD_<n>``
                        (1 KiB values) env requests; says ``tunnels-ok`` with
                        what it printed.

Every mode but ``cancel`` then holds its connections until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import asyncssh
from asyncssh.constants import MSG_REQUEST_SUCCESS
from asyncssh.packet import String, UInt32

# The port in a virtual forward is only a label; 80 as in ``ssh -R NAME:80:...``.
LABEL_PORT = 80

# A request head larger than this is not one of ours: stop reading.
MAX_HEAD_BYTES = 64 * 1024


def say(line: str) -> None:
    print(line, flush=True)


async def connect(args: argparse.Namespace, key: str) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1", args.port, username="tunnel", client_keys=[key],
        known_hosts=args.known_hosts, agent_path=None, config=None,
    )  # fmt: skip


Handler = Callable[[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]], Awaitable[None]]


def http_responder(who: str) -> Handler:
    """Answer one request with ``who`` as the body, then close the channel."""

    async def respond(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
            chunk = await reader.read(4096)
            if not chunk:
                break
            head += chunk
        body = who.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    return respond


async def never_read(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
    say("channel accepted; not reading")
    await asyncio.Event().wait()  # holds the channel open, reads nothing


async def never_confirm(orig_host: str, orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
    # asyncssh confirms a forwarded channel once the session factory returns: never.
    say(f"channel open from {orig_host}:{orig_port}; not answering")
    await asyncio.Event().wait()
    raise AssertionError("not reached")


class LateSession(asyncssh.SSHTCPSession[bytes]):
    """Reports what happens to a channel confirmed after the router stopped waiting."""

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        say("confirmed")

    def eof_received(self) -> bool:
        say("eof from the router")
        return False  # and close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        say("channel closed by the router")


async def confirm_when_told(orig_host: str, orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
    say(f"channel open from {orig_host}:{orig_port}; waiting for a line on stdin")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return LateSession()


def refusing(who: str, refused: set[int]) -> Callable[[str, int], Handler]:
    """A session factory that refuses the opens numbered in ``refused``."""
    opens = 0

    def factory(orig_host: str, orig_port: int) -> Handler:
        nonlocal opens
        opens += 1
        if opens in refused:
            say(f"open {opens} refused")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "refused on purpose")
        say(f"open {opens} accepted")
        return http_responder(who)

    return factory


async def run(args: argparse.Namespace) -> int:
    conn = await connect(args, args.key[0])
    say("connected")
    if args.mode == "serve":
        await conn.start_server(lambda host, port: http_responder(args.who), args.name, LABEL_PORT)
        say(f"forwarding {args.name}")
    elif args.mode == "refuse":
        refused = {int(number) for number in args.opens.split(",")}
        await conn.start_server(refusing(args.who, refused), args.name, LABEL_PORT)
        say(f"forwarding {args.name}")
    elif args.mode == "never-confirm":
        await conn.create_server(never_confirm, args.name, args.label_port)
        say(f"forwarding {args.name}")
    elif args.mode == "late-confirm":
        await conn.create_server(confirm_when_told, args.name, LABEL_PORT)
        say(f"forwarding {args.name}")
    elif args.mode == "never-read":
        await conn.start_server(lambda host, port: never_read, args.name, LABEL_PORT)
        say(f"forwarding {args.name}")
    elif args.mode == "env-flood":
        await conn.start_server(lambda host, port: http_responder("flood"), args.name, LABEL_PORT)
        say(f"forwarding {args.name}")
        await env_flood(conn, args.count)
    elif args.mode == "race":
        await race(conn, await connect(args, args.key[1]), args.prefix, args.rounds)
    elif args.mode == "cancel":
        await cancel(conn, args.name)
        conn.close()
        return 0
    await wait_for_sigterm()
    conn.close()
    return 0


async def race(
    conn_a: asyncssh.SSHClientConnection, conn_b: asyncssh.SSHClientConnection,
    prefix: str, rounds: int,
) -> None:  # fmt: skip
    for number in range(rounds):
        name = f"{prefix}-{number}"
        results = await asyncio.gather(
            conn_a.start_server(lambda host, port: http_responder("A"), name, LABEL_PORT),
            conn_b.start_server(lambda host, port: http_responder("B"), name, LABEL_PORT),
            return_exceptions=True,
        )
        won = "".join(
            who for who, result in zip("AB", results, strict=True)
            if isinstance(result, asyncssh.SSHListener)
        )  # fmt: skip
        failures = [r for r in results if isinstance(r, BaseException)]
        unexpected = [r for r in failures if not isinstance(r, asyncssh.ChannelListenError)]
        say(f"round {number} name={name} won={won or 'none'} odd={len(unexpected)}")
    say("race done")


async def env_flood(conn: asyncssh.SSHClientConnection, count: int) -> None:
    """One session with ``2 * count + 2`` env requests (asyncssh sends each as a channel
    request wanting no reply, all before the exec), then ``tunnels --json`` on it."""
    env = {"HOSTMUX_POOL": "1", "HOSTMUX_POOL_MEMBER": "flood"}
    env |= {f"HOSTMUX_FLOOD_{n}": "v" * 256 for n in range(count)}
    env |= {f"LC_FLOOD_{n}": "w" * 1024 for n in range(count)}
    result = await conn.run("tunnels --json", env=env, check=True)
    say(f"tunnels-ok {str(result.stdout).strip()}")


async def cancel(conn: asyncssh.SSHClientConnection, name: str) -> None:
    """``cancel-tcpip-forward`` for NAME, and what came back.

    asyncssh's public ``close_client_tcp_listener`` ignores the answer, so the
    request is made with the private call that returns it.
    """
    try:
        reply, _ = await conn._make_global_request(
            b"cancel-tcpip-forward", String(name), UInt32(LABEL_PORT)
        )
    except (asyncssh.Error, OSError) as exc:
        say(f"cancel refused: connection closed ({exc})")
        return
    say(f"cancel {'accepted' if reply == MSG_REQUEST_SUCCESS else 'refused'}")


async def wait_for_sigterm() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="asyncssh_peer")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("--key", action="append", required=True)
    # The forward's port (a label): 443 asks for a TLS passthrough tunnel.
    parser.add_argument("--label-port", type=int, default=LABEL_PORT)
    modes = parser.add_subparsers(dest="mode", required=True)
    serve = modes.add_parser("serve")
    serve.add_argument("name")
    serve.add_argument("who")
    refuse = modes.add_parser("refuse")
    refuse.add_argument("name")
    refuse.add_argument("who")
    refuse.add_argument("opens")
    for mode in ("never-confirm", "late-confirm", "never-read", "cancel"):
        modes.add_parser(mode).add_argument("name")
    flood = modes.add_parser("env-flood")
    flood.add_argument("name")
    flood.add_argument("count", type=int)
    race_mode = modes.add_parser("race")
    race_mode.add_argument("prefix")
    race_mode.add_argument("rounds", type=int)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse(sys.argv[1:]))))
