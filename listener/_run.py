"""The listener's life: connect, hold the tunnel, reconnect for ever.

Resource handling: ``run_listener`` owns one ``TunnelSession`` at a time and
closes it on SIGTERM/SIGINT (or when ``stop`` is set) before returning.
Error handling: every failure to connect or hold the tunnel is logged and
retried after a jittered back-off; only a bad configuration ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from router._log import fields

from ._config import ListenerConfig
from ._reconnect import Backoff
from ._ssh_client import HostKeyRejected, TunnelError, TunnelSession, TunnelSpec

log = logging.getLogger("hostmux.listener")

T = TypeVar("T")


def _spec(config: ListenerConfig) -> TunnelSpec:
    host, port = config.router_address
    target_host, target_port = config.target_address
    return TunnelSpec(
        host=host,
        port=port,
        user=config.user,
        identity_file=config.identity_file,
        known_hosts=config.known_hosts_path,
        fingerprints=tuple(config.host_key_fingerprint),
        name=config.name,
        target_host=target_host,
        target_port=target_port,
        keepalive_interval_s=config.keepalive_interval_s,
        connect_timeout_s=config.connect_timeout_s,
    )


async def run_listener(config: ListenerConfig, *, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    spec = _spec(config)
    backoff = Backoff(cap_s=config.backoff_max_s)
    name = config.name  # after the first success: the name we were given, kept
    last_url: str | None = None
    try:
        while not stop.is_set():
            started = time.monotonic()
            async with TunnelSession(spec) as session:
                try:
                    forward = await _unless_stopped(session.open(name), stop)
                except TunnelError as exc:
                    level = logging.ERROR if isinstance(exc, HostKeyRejected) else logging.WARNING
                    log.log(level, fields("tunnel_failed", router=config.router, reason=str(exc)))
                    forward = None
                if forward is not None:
                    name = forward.name
                    log.info(fields("tunnel_up", name=forward.name, url=forward.url,
                                    router=config.router, target=config.target))  # fmt: skip
                    if forward.url != last_url:
                        print(forward.url, flush=True)  # stdout: the URL, for scripts
                        last_url = forward.url
                    await _unless_stopped(session.wait_closed(), stop)
                    if stop.is_set():
                        break
                    log.warning(fields("tunnel_down", name=forward.name, router=config.router))
            backoff.connection_lasted(time.monotonic() - started)
            delay = backoff.next_delay()
            log.info(fields("reconnect_wait", seconds=round(delay, 2)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info(fields("listener_stopped"))


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """Run ``work`` unless ``stop`` is set first; then cancel it and return None."""
    task = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()
