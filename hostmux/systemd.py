"""systemd's readiness protocol (``Type=notify``): READY=1, STOPPING=1, WATCHDOG=1.

The service manager names a datagram socket in ``NOTIFY_SOCKET`` (a path, or
``@name`` for the abstract namespace); a message is ``KEY=VALUE`` lines in one
datagram (sd_notify(3)). A few lines of ``socket.AF_UNIX``: no C library.
``WATCHDOG_USEC`` (set by ``WatchdogSec=``) asks for ``WATCHDOG=1`` more often
than that; we send it at half the period, from the event loop, so a stuck loop
is what stops the pings and gets the service restarted.

Error handling: nothing here fails the process: without ``NOTIFY_SOCKET``
every call does nothing, and a send that fails is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

from hostmux.log import fields

log = logging.getLogger("hostmux.systemd")

# The variables the service manager sets for the main process only; a child we start
# (a worker) must not see them, or it would speak for the service.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends sd_notify messages to ``NOTIFY_SOCKET``; does nothing when it is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_s(env)
        self._failed = False

    def __repr__(self) -> str:
        return f"<Notifier {self.address!r} watchdog_s={self.watchdog_s}>"

    def send(self, *lines: str) -> None:
        """One datagram of ``KEY=VALUE`` lines (e.g. ``"READY=1"``)."""
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:  # said once: a manager that is gone would flood the log
                log.warning(fields("sd_notify_failed", socket=self.address, reason=str(exc)))
            self._failed = True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    async def keep_watchdog(self) -> None:
        """Send WATCHDOG=1 every half ``WATCHDOG_USEC`` (returns at once when it is unset)."""
        if self.watchdog_s is None or self.address is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)  # the protocol's period, not a sync


def without_notify(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for a child process: the service manager talks to us only."""
    return {k: v for k, v in environ.items() if k not in NOTIFY_VARIABLES}


def _address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):  # the abstract namespace: a leading NUL byte
        return "\0" + value[1:]
    return value


def _watchdog_s(environ: Mapping[str, str]) -> float | None:
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):  # meant for another process (sd_watchdog_enabled)
        return None
    return int(usec) / 1_000_000
