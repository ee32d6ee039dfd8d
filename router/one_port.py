"""One-port mode: SSH and HTTPS (and plain HTTP) on the same port, told apart by the first bytes.

An SSH client speaks first with ``SSH-2.0-...``; a TLS client with a
ClientHello (record type 0x16); anything else is taken as plain HTTP. The
router peeks at those bytes without consuming them (``MSG_PEEK``), then hands
the socket, untouched, to asyncssh or to the ordinary front door — so a router
needs only port 443 open. A connection that says nothing within
``sniff_timeout_s`` is closed.

Resource handling: ``serve_one_port`` owns the listening socket and, in a
TaskGroup, a task per connection being sniffed (cancelled and awaited when it
stops); once handed over, a connection belongs to asyncssh or to the front
door's ``ConnectionSet``.

Error handling: as trio's ``serve_listeners``, an accept that fails for want of
descriptors or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS) is logged once per
burst (``one_port_accept_failed``, then ``one_port_accept_resumed``), and the
loop pauses briefly and goes on: connections closing free what it needs. An
accept that fails for one connection's sake (ECONNABORTED and the like) is
skipped. Either way the router, and every tunnel it holds, stays up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hostmux.log import fields
from hostmux.relay import READ_CHUNK_BYTES, ConnectionHandler
from hostmux.tunnel.coalescing import accepted_ssh_connection

if TYPE_CHECKING:
    from router.tls_front import HelloRouting

log = logging.getLogger("hostmux.oneport")

# Enough to tell "SSH-" from a TLS record header from an HTTP method.
_PEEK_BYTES = 4
_TLS_HANDSHAKE_RECORD = 0x16
# accept(2) errors that say the process or the system is out of something
# (trio's ACCEPT_CAPACITY_ERRNOS): wait for connections to close, then retry.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# trio's pause after one of those: long enough not to spin on a listening socket
# that stays readable, short enough that a freed descriptor is soon used.
_CAPACITY_PAUSE_S = 0.1
# accept(2) errors about one connection that died before it was accepted
# (trio's ignorable list; not every platform defines every name).
_PEER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET",
    )
    if hasattr(errno, name)
)  # fmt: skip


class AcceptFailures:
    """Counts a burst of failed accepts, so that it is logged once, not ten times a second."""

    def __init__(self) -> None:
        self.in_burst = 0

    def __repr__(self) -> str:
        return f"<AcceptFailures in_burst={self.in_burst}>"

    def failed(self) -> bool:
        """Count one failure; True when it starts a burst (log it)."""
        self.in_burst += 1
        return self.in_burst == 1

    def succeeded(self) -> int:
        """An accept worked: the failures of the burst it ends (0: there was none)."""
        ended, self.in_burst = self.in_burst, 0
        return ended


def open_listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_one_port(
    sock: socket.socket,
    *,
    ssh_factory: Callable[[], Callable[[str, int], Any] | None],
    https: ConnectionHandler,
    http: ConnectionHandler,
    tls: ssl.SSLContext,
    tls_handshake_timeout_s: float,
    sniff_timeout_s: float,
    hellos: HelloRouting | None = None,
) -> None:
    """Accept on ``sock`` for ever (until cancelled), dispatching each connection;
    ``hellos``: TLS connections go there (their ClientHello is peeked first)."""
    loop = asyncio.get_running_loop()
    failures = AcceptFailures()
    try:
        async with asyncio.TaskGroup() as sniffing:
            while True:
                try:
                    conn, addr = await loop.sock_accept(sock)
                except OSError as exc:
                    if exc.errno not in _CAPACITY_ERRNOS | _PEER_ERRNOS:
                        raise
                    if exc.errno in _CAPACITY_ERRNOS:
                        if failures.failed():
                            _log_capacity_failure(exc)
                        await asyncio.sleep(_CAPACITY_PAUSE_S)
                    continue
                if ended := failures.succeeded():
                    log.info(fields("one_port_accept_resumed", failures=ended))
                sniffing.create_task(
                    _dispatch(conn, addr, ssh_factory, https, http, tls, tls_handshake_timeout_s,
                              sniff_timeout_s, hellos)
                )  # fmt: skip
    finally:
        sock.close()


def _log_capacity_failure(exc: OSError) -> None:
    code = exc.errno or 0
    log.error(
        fields(
            "one_port_accept_failed", errno=errno.errorcode.get(code, str(code)),
            reason=os.strerror(code), retry_ms=round(_CAPACITY_PAUSE_S * 1000),
        )
    )  # fmt: skip


async def _dispatch(
    conn: socket.socket,
    addr: Any,
    ssh_factory: Callable[[], Callable[[str, int], Any] | None],
    https: ConnectionHandler,
    http: ConnectionHandler,
    tls: ssl.SSLContext,
    tls_handshake_timeout_s: float,
    sniff_timeout_s: float,
    hellos: HelloRouting | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    peer = f"{addr[0]}:{addr[1]}"
    try:
        async with asyncio.timeout(sniff_timeout_s):
            head = await _peek(loop, conn)
    except (TimeoutError, OSError):
        conn.close()
        return
    except asyncio.CancelledError:  # the server stops before this one was handed over
        conn.close()
        raise
    if not head:
        conn.close()
        return
    try:
        if head.startswith(b"SSH-"):
            factory = ssh_factory()
            if factory is None:
                conn.close()
                return
            await loop.connect_accepted_socket(
                lambda: accepted_ssh_connection(factory(str(addr[0]), int(addr[1]))), conn
            )
        elif head[0] == _TLS_HANDSHAKE_RECORD and hellos is not None:
            await hellos.dispatch(conn, (str(addr[0]), int(addr[1])))
        elif head[0] == _TLS_HANDSHAKE_RECORD:
            await _to_front_door(loop, conn, https, tls, tls_handshake_timeout_s)
        else:
            await _to_front_door(loop, conn, http, None, None)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        log.info(fields("one_port_dropped", peer=peer, reason=type(exc).__name__))
        conn.close()


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first bytes the client sent, left in the socket for whoever reads next."""
    while True:
        try:
            return conn.recv(_PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(conn.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(conn.fileno())


async def _to_front_door(
    loop: asyncio.AbstractEventLoop,
    conn: socket.socket,
    handler: ConnectionHandler,
    tls: ssl.SSLContext | None,
    handshake_timeout_s: float | None,
) -> None:
    reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
    protocol = asyncio.StreamReaderProtocol(reader, handler)
    await loop.connect_accepted_socket(
        lambda: protocol, conn, ssl=tls, ssl_handshake_timeout=handshake_timeout_s
    )
