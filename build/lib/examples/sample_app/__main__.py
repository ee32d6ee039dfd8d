"""Run the sample app: ``python -m examples.sample_app [--host H] [--port P]``.

Once the socket is listening, exactly one line goes to stdout::

    sample-app listening on http://127.0.0.1:54321

Tests and scripts wait for that line instead of sleeping; with ``--port 0``
(the default) it is also how they learn the port the OS picked. After it the
app stays quiet: no access log, and only warnings and errors on stderr.

Ctrl-C or SIGTERM shuts it down gracefully with exit status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Sequence
from functools import partial
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from examples.sample_app.app import app

# Large enough for the 1 MiB+ echo tests with room to spare; hypercorn's
# default (16 MiB) would do too, but tunnel tests probe well past 1 MiB.
WEBSOCKET_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
# How long open streams (/events, /slow-headers) may keep a shutdown waiting
# before they are cancelled: short, because they would never end on their own.
GRACEFUL_TIMEOUT_S = 2.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    # KeyboardInterrupt only escapes if Ctrl-C lands before _serve installs
    # its signal handlers; stopping is what was asked for, so it is no error.
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve, _hypercorn_config(args.host, args.port))
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.sample_app",
        description="Serve the hostmux sample app (HTTP, SSE, WebSocket echo).",
    )
    # Loopback by default: the app is meant to be reached through a tunnel.
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port to bind; 0 picks a free one (default: 0)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    return args


def _hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    # IPv6 literals need brackets in hypercorn's "host:port" bind syntax.
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # no line per request: demo terminals and test logs stay readable
    config.loglevel = "WARNING"  # hides hypercorn's own "Running on ..." line; errors still show
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_SIZE
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    return config


async def _serve(config: Config) -> None:
    """Serve until SIGINT or SIGTERM, announcing the address once listening.

    Resource handling: hypercorn binds and listens before it reports started,
    so the printed address accepts connections at once. On a signal it stops
    accepting, gives open requests ``GRACEFUL_TIMEOUT_S`` to finish, then
    cancels them.

    Error handling: the signal receiver is opened *before* serving, so a
    SIGTERM sent the moment the ready line is read still ends in a clean
    shutdown rather than the default "killed by signal".
    """
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            # Our app's messages are plain mappings; hypercorn types them as
            # precise TypedDicts. Same ASGI 3 protocol, so we tell mypy so once.
            asgi_app = cast(ASGIFramework, app)
            binds: list[str] = await nursery.start(
                partial(serve, asgi_app, config, shutdown_trigger=stop.wait)
            )
            # hypercorn reports the real address, so "--port 0" shows the chosen port.
            print(f"sample-app listening on {binds[0]}", flush=True)
            async for _signal in signals:
                stop.set()
                break


if __name__ == "__main__":
    raise SystemExit(main())
