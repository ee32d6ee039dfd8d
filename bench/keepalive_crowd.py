"""Many idle keep-alive HTTP connections to a router, for the scale benchmark.

Opens ``--count`` TCP connections to 127.0.0.1:``--port`` (spread over
``--sources`` loopback source addresses), sends one ``GET`` with ``--host`` on
each, reads the whole response, and keeps the connection open. Prints one JSON
line ``{"open", "failed", "non200", "still_open", "errors", "seconds"}`` once
all are done, then holds the connections until ``quit`` or EOF on stdin, or
``--hold-s`` has passed, and closes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from processes import raise_nofile_limit, stdin_reader

# The product's packages from the working directory (scale.py starts this in the tree or
# a --rev snapshot), not whichever tree the environment happens to have installed.
sys.path.insert(0, str(Path.cwd()))

from hostmux.process import run_event_loop  # uvloop when installed, as the router

MAX_ERRORS = 5
# One request must finish within this long, or the connection counts as failed.
REQUEST_TIMEOUT_S = 30.0


async def one_connection(
    args: argparse.Namespace, source: str | None, limit: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
    """Open, request, read the answer; the open connection, or why it failed."""
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\nUser-Agent: hostmux-bench\r\n\r\n"
    ).encode()
    async with limit:
        writer = None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", args.port, local_addr=(source, 0) if source else None
                )
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            if writer is not None:
                writer.close()
            return f"{type(exc).__name__}: {exc}"
        if status != 200:
            writer.close()
            return f"HTTP {status}"
        return reader, writer


async def crowd(args: argparse.Namespace) -> None:
    sources = [f"127.0.0.{i}" for i in range(2, 2 + args.sources)] if args.sources else [None]
    limit = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()
    results = await asyncio.gather(
        *(one_connection(args, sources[i % len(sources)], limit) for i in range(args.count))
    )
    opened = [r for r in results if not isinstance(r, str)]
    errors = [r for r in results if isinstance(r, str)]
    seconds = time.monotonic() - started
    await asyncio.sleep(0.5)  # let closes by the server arrive before counting what is open
    report = {
        "open": len(opened),
        "failed": len(errors),
        "non200": sum(1 for e in errors if e.startswith("HTTP ")),
        "still_open": sum(1 for reader, _ in opened if not reader.at_eof()),
        "errors": sorted(set(errors))[:MAX_ERRORS],
        "seconds": round(seconds, 3),
    }
    print(json.dumps(report), flush=True)
    control = await stdin_reader()
    try:
        async with asyncio.timeout(args.hold_s):
            await control.readline()  # "quit" or EOF
    except TimeoutError:
        pass
    for _, writer in opened:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True, help="Host header")
    parser.add_argument("--path", default="/1k")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight")
    parser.add_argument("--sources", type=int, default=8, help="use 127.0.0.2.. as sources")
    parser.add_argument("--hold-s", type=float, default=60.0, help="longest hold")
    args = parser.parse_args()
    raise_nofile_limit()
    run_event_loop(crowd(args))


if __name__ == "__main__":
    main()
