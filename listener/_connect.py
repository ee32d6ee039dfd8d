"""``hostmux-listener connect URL``: stdin/stdout ⇄ the router's SSH-over-WebSocket endpoint.

For plain OpenSSH through HTTPS-only egress (chisel's stdio mode)::

    ssh -o ProxyCommand='hostmux-listener connect wss://tunnels.example.org/_hostmux/ssh' \\
        -R myapp:80:localhost:3000 tunnels.example.org

OpenSSH still does all of SSH (keys, host-key checking against the name you
gave it); this only moves its bytes as binary WebSocket messages. An HTTP
proxy in ``HTTPS_PROXY`` is used (``NO_PROXY`` respected) by ``websockets``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from hostmux.tunnel.websocket import FLUSH_BYTES, MAX_MESSAGE_BYTES

# Read stdin in chunks of at most this size: one WebSocket message each (framing
# a larger message cost far more per byte, hostmux.tunnel.websocket.FLUSH_BYTES).
_CHUNK = FLUSH_BYTES


async def _pump(url: str, context: ssl.SSLContext | None, headers: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_CHUNK)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out_transport, out_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout
    )
    writer = asyncio.StreamWriter(out_transport, out_protocol, None, loop)
    kwargs: dict[str, Any] = {}
    if url.startswith("wss://") and context is not None:
        kwargs["ssl"] = context
    async with connect(url, additional_headers=headers, max_size=MAX_MESSAGE_BYTES,
                       compression=None, ping_interval=None, **kwargs) as ws:  # fmt: skip

        async def upstream() -> None:
            while data := await reader.read(_CHUNK):
                await ws.send(data)
            await ws.close()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    writer.write(message if isinstance(message, bytes) else message.encode())
                    await writer.drain()
            writer.close()

        try:
            async with asyncio.TaskGroup() as tg:
                up = tg.create_task(upstream())
                await downstream()
                up.cancel()
        except* (ConnectionClosed, OSError):
            pass  # either side hung up: ssh sees the end of its stream


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="hostmux-listener connect", description=__doc__)
    parser.add_argument("url", help="wss://DOMAIN[:PORT]/_hostmux/ssh")
    parser.add_argument("--ca-file", help="CA to trust for the router's certificate")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    args = parser.parse_args(argv)
    context = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    headers = dict(h.split(":", 1) for h in args.header if ":" in h)
    try:
        asyncio.run(_pump(args.url, context, headers))
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        print(f"hostmux-listener connect: error: {exc}", file=sys.stderr)
        return 255  # what ssh reports for a failed ProxyCommand
    return 0
