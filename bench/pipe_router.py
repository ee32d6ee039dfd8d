"""A router that only pipes bytes: the ceiling for any Python router on asyncssh.

Not a product: a bench row that answers "how fast could hostmux be if it did
no HTTP work at all?". It holds remote forwards exactly as the router does
(asyncssh server, the router's ciphers, coalesced SSH writes, no needless
IGNORE packets, the same channel window, uvloop) but its front door parses nothing: every TCP
connection is piped, both ways, into one new ``forwarded-tcpip`` channel of
the most recent tunnel — no Host routing, no header rewriting, no log line,
no limits. The design's spike (``design.md``, "Concurrency") measured the
same thing before the router existed.

Usage (bench/rows.py starts it; the client is plain ``ssh -R NAME:80:...``)::

    python bench/pipe_router.py --ssh-port P --http-port Q \\
        --host-key FILE --authorized-keys FILE

Resource handling: each browser connection owns its channel; when either side
ends, the other is shut down and both are closed. The process runs until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import asyncssh

# The product's packages from the working directory: the tree or a --rev snapshot.
sys.path.insert(0, str(Path.cwd()))

from hostmux.process import run_event_loop
from hostmux.tunnel.coalescing import CoalescingListener
from hostmux.tunnel.ssh_ignore import drop_needless_ignores
from router.ssh.server import DEFAULT_CIPHERS

WINDOW = 2 * 1024 * 1024  # the router's default channel window
READ = 256 * 1024


class _Forwards(asyncssh.SSHServer):
    """Accepts any ``-R NAME:80`` of an authorized key; the newest is the route."""

    route: tuple[asyncssh.SSHServerConnection, str, int] | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        _Forwards.route = (self._conn, listen_host, listen_port)
        return _Virtual()


class _Virtual(asyncssh.SSHListener):
    def get_port(self) -> int:
        return 80

    def close(self) -> None:
        _Forwards.route = None

    async def wait_closed(self) -> None:
        return None


async def _copy(reader: Any, writer: Any) -> None:
    try:
        while data := await reader.read(READ):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except (ConnectionError, OSError, asyncssh.Error):
        pass


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    route = _Forwards.route
    try:
        if route is None:
            return
        conn, host, port = route
        peer = writer.get_extra_info("peername") or ("127.0.0.1", 0)
        up_reader, up_writer = await conn.open_connection(
            host, port, peer[0], peer[1], window=WINDOW
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_copy(reader, up_writer))
                group.create_task(_copy(up_reader, writer))
        finally:
            up_writer.close()
    except (ConnectionError, OSError, asyncssh.Error):
        pass
    finally:
        writer.close()


async def _main(args: argparse.Namespace) -> None:
    acceptor = await asyncssh.listen(
        "127.0.0.1",
        args.ssh_port,
        tunnel=CoalescingListener(),
        server_factory=_Forwards,
        server_host_keys=[asyncssh.read_private_key(str(args.host_key))],
        authorized_client_keys=str(args.authorized_keys),
        gss_host=None,
        encryption_algs=list(DEFAULT_CIPHERS),
        reuse_address=True,
    )
    front = await asyncio.start_server(_pipe, "127.0.0.1", args.http_port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    front.close()
    acceptor.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            await acceptor.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ssh-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--host-key", type=Path, required=True)
    parser.add_argument("--authorized-keys", type=Path, required=True)
    drop_needless_ignores()  # as the router does
    run_event_loop(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
