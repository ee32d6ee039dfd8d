"""systemd's readiness protocol (``Type=notify``): READY=1, STOPPING=1, WATCHDOG=1.

The service manager names a datagram socket in ``NOTIFY_SOCKET`` (a path, or
``@name`` for the abstract namespace); a message is ``KEY=VALUE`` lines in one
datagram (sd_notify(3)). A few lines of ``socket.AF_UNIX``: no C library.
``WATCHDOG_USEC`` (set by ``WatchdogSec=``) asks for ``WATCHDOG=1`` more often
than that; we send it at half the period, from the event loop, so a stuck loop
is what stops the pings and gets the service restarted.

``NotifyReceiver`` is the manager's side, for a process that starts children
speaking the protocol to it (the router's workers supervisor): each message
comes with its sender's pid, which the kernel vouches for (``SO_PASSCRED``),
and only a child of the receiving process is heard.

Error handling: nothing here fails the process: without ``NOTIFY_SOCKET``
every call does nothing, and a send that fails is logged once; a message the
receiver cannot read (too long, not UTF-8, not from a child) is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable, Mapping

from hostmux.log import fields

log = logging.getLogger("hostmux.systemd")

# The variables the service manager sets for the main process only; a child we start
# (a worker) must not see them, or it would speak for the service.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# Reason: our messages are a line or two; systemd itself reads at most a page or so more.
MAX_MESSAGE_BYTES = 4096
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


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


class NotifyReceiver:
    """A ``NOTIFY_SOCKET`` for this process's children: ``on_message(pid, fields)`` for each
    message a child sends (``{"READY": "1", ...}``), on the event loop.

    The socket is in the abstract namespace under a random name (no file to
    clean up after a ``kill -9``, no path length to fit); anyone who finds the
    name could send to it, so a sender that is not a child of this process
    (``waitid`` says so) is not heard.

    Resource handling: ``open`` binds it and reads it on the running loop until ``close``.
    """

    def __init__(self, on_message: Callable[[int, dict[str, str]], None]) -> None:
        self._on_message = on_message
        self._sock: socket.socket | None = None
        self.address = ""  # the NOTIFY_SOCKET value for the children, once open

    def __repr__(self) -> str:
        return f"<NotifyReceiver {self.address!r}>"

    def open(self) -> str:
        """Bind the socket and start reading it; the ``NOTIFY_SOCKET`` value to give children."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            name = f"hostmux-notify-{os.getpid()}-{secrets.token_hex(8)}"
            sock.bind("\0" + name)
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        except BaseException:
            sock.close()
            raise
        self._sock, self.address = sock, "@" + name
        return self.address

    def close(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _read(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data, ancillary, flags, _ = self._sock.recvmsg(
                    MAX_MESSAGE_BYTES, socket.CMSG_SPACE(_UCRED.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            pid = next(
                (
                    _UCRED.unpack(payload[: _UCRED.size])[0]
                    for level, kind, payload in ancillary
                    if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
                ),
                0,
            )
            if flags & socket.MSG_TRUNC or not pid or not _is_child(pid):
                continue
            try:
                text = data.decode()
            except UnicodeDecodeError:
                continue
            fields = dict(line.partition("=")[::2] for line in text.split("\n") if "=" in line)
            self._on_message(pid, fields)


def _is_child(pid: int) -> bool:
    """Whether ``pid`` is a child of this process (asked without reaping it)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


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
