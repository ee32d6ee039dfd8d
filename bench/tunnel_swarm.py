"""Many idle tunnels in one process, for the scale benchmark (driven by ``scale.py``).

Each tunnel is what ``hostmux-listener`` holds: one SSH connection to the
router (public-key login, pinned host key, AES-GCM, keepalives) with one
``forward_remote_port(NAME, 80, target)``; a request routed to NAME becomes a
channel that asyncssh connects to the target, as in the listener.

Commands on stdin, one JSON answer per line on stdout:

    open PREFIX START STOP STEP   open tunnels PREFIX-i for i in range(START, STOP, STEP)
    quit                          close every connection and exit (so does EOF)

An ``open`` answers ``{"opened", "failed", "errors", "seconds", "held"}`` once
every tunnel asked for is up or has failed; each attempt is bounded by
``--connect-timeout-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh
from processes import raise_nofile_limit, stdin_reader

# The product's packages from the working directory (scale.py starts this in the tree or
# a --rev snapshot), not whichever tree the environment happens to have installed.
sys.path.insert(0, str(Path.cwd()))

from hostmux.process import run_event_loop  # uvloop when installed, as the router

# The listener's cipher order: AES-GCM is the fastest in asyncssh.
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
# Distinct failure texts kept per answer (the rest are only counted).
MAX_ERRORS = 5


class Swarm:
    """The connections this process holds.

    Resource handling: ``close`` closes them all and waits (bounded).
    Error handling: a tunnel that fails is counted and its reason kept; the
    others go on.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._key = asyncssh.read_private_key(str(args.identity_file))
        self._known_hosts = asyncssh.read_known_hosts(str(args.known_hosts))
        self._sources: list[str] = args.sources.split(",") if args.sources else []
        self._target_host, target_port = args.target.rsplit(":", 1)
        self._target_port = int(target_port)
        host, port = args.router.rsplit(":", 1)
        self._router = (host, int(port))
        self._limit = asyncio.Semaphore(args.concurrency)
        self._conns: list[Any] = []
        self._opened = 0

    def __repr__(self) -> str:
        return f"<Swarm router={self._router} held={len(self._conns)}>"

    async def open_many(self, names: list[str]) -> dict[str, object]:
        started = time.monotonic()
        results = await asyncio.gather(*(self._open_one(n) for n in names))
        errors = [r for r in results if r is not None]
        return {
            "opened": len(names) - len(errors),
            "failed": len(errors),
            "errors": sorted(set(errors))[:MAX_ERRORS],
            "seconds": round(time.monotonic() - started, 3),
            "held": len(self._conns),
        }

    async def _open_one(self, name: str) -> str | None:
        async with self._limit:
            source = self._sources[self._opened % len(self._sources)] if self._sources else None
            self._opened += 1
            conn = None
            try:
                async with asyncio.timeout(self._args.connect_timeout_s):
                    conn = await asyncssh.connect(
                        *self._router,
                        username="bench",
                        client_keys=[self._key],
                        known_hosts=self._known_hosts,
                        agent_path=None,
                        preferred_auth=["publickey"],
                        encryption_algs=CIPHERS,
                        keepalive_interval=self._args.keepalive_s,
                        keepalive_count_max=3,
                        local_addr=(source, 0) if source else None,
                    )
                    await conn.forward_remote_port(name, 80, self._target_host, self._target_port)
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                if conn is not None:
                    conn.close()
                return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self._conns.append(conn)
            return None

    async def close(self) -> None:
        for conn in self._conns:
            conn.close()
        try:
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.wait_closed() for c in self._conns))
        except TimeoutError:
            pass
        self._conns.clear()


async def serve(args: argparse.Namespace) -> None:
    swarm = Swarm(args)
    print(json.dumps({"ready": True}), flush=True)
    control = await stdin_reader()
    try:
        while True:
            line = (await control.readline()).decode()
            words = line.split()
            if not words or words[0] == "quit":
                return
            if words[0] == "open" and len(words) == 5:
                prefix, start, stop, step = words[1], *map(int, words[2:])
                answer = await swarm.open_many([f"{prefix}-{i}" for i in range(start, stop, step)])
            else:
                answer = {"error": f"unknown command {line.strip()!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        await swarm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--router", required=True, help="router SSH address HOST:PORT")
    parser.add_argument("--identity-file", type=Path, required=True)
    parser.add_argument("--known-hosts", type=Path, required=True)
    parser.add_argument("--target", required=True, help="where tunnelled requests go, HOST:PORT")
    parser.add_argument("--concurrency", type=int, default=16, help="handshakes in flight")
    parser.add_argument("--keepalive-s", type=float, default=15.0, help="as the listener's default")
    parser.add_argument("--connect-timeout-s", type=float, default=60.0)
    parser.add_argument("--sources", default="", help="loopback source addresses, comma-separated")
    args = parser.parse_args()
    raise_nofile_limit()
    run_event_loop(serve(args))


if __name__ == "__main__":
    main()
