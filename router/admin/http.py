"""The admin listener's HTTP/1.1 server: h11 parses, this module only moves bytes.

Rules:

1. It listens on a loopback address or a unix socket (``admin_listen``; the
   config refuses anything else); a unix socket is made mode 0600, and a
   stale socket file left by a dead router is replaced (any other file there
   is a ConfigError).
2. Every request is read whole (head at most ``MAX_HEAD_BYTES``, body at most
   ``MAX_BODY_BYTES``) within ``READ_TIMEOUT_S``, then handed to the handler;
   bad HTTP gets 400, too much 413/431, and the connection closes.
3. At most ``MAX_CONNECTIONS`` connections at once (more are closed at once):
   the admin API is for one operator, not for a crowd.
4. A handler that fails answers 500 and logs why; nothing a client sends ends
   the server or shows it a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import h11

from hostmux.config.layered import ConfigError
from hostmux.log import describe, fields

log = logging.getLogger("hostmux.admin")

# Reason: the admin API's requests are a path, a token and a small JSON body.
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
# Reason: a request (or a keep-alive connection's next one) that takes longer is abandoned.
READ_TIMEOUT_S = 30.0
# Reason: an operator's browser and CLI use a handful; more is someone holding sockets.
MAX_CONNECTIONS = 64
_READ_BYTES = 65536


@dataclass(frozen=True)
class AdminRequest:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-case names; a repeated header's last value
    body: bytes
    peer: str  # who asked, for the audit log: 127.0.0.1:PORT or unix:pid:N:uid:N


@dataclass(frozen=True)
class AdminReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[AdminRequest], Awaitable[AdminReply]]


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def start_admin_server(
    where: tuple[str, int] | Path, handler: Handler, headers: tuple[tuple[str, str], ...]
) -> asyncio.Server:
    """Listen on ``where`` (rule 1); ``headers`` go on every reply (security headers)."""
    active: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(active) >= MAX_CONNECTIONS:  # rule 3
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        active.add(task)
        try:
            await _serve(reader, writer, handler, headers)
        except (ConnectionError, asyncio.CancelledError):
            writer.transport.abort()
        except h11.LocalProtocolError as exc:  # a bug of ours: logged, never a traceback
            log.error(fields("admin_http_error", error=describe(exc)))
            writer.transport.abort()
        finally:
            active.discard(task)
            writer.close()

    if isinstance(where, Path):
        _remove_stale_socket(where)
        old_umask = os.umask(0o177)  # the socket is made 0600: only this user may connect
        try:
            return await asyncio.start_unix_server(on_connection, path=os.fspath(where))
        except OSError as exc:
            raise ConfigError(f"cannot listen on admin_listen {where}: {describe(exc)}") from None
        finally:
            os.umask(old_umask)
    host, port = where
    try:
        return await asyncio.start_server(on_connection, host, port, reuse_address=True)
    except OSError as exc:
        raise ConfigError(f"cannot listen on admin_listen {host}:{port}: {describe(exc)}") from None


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"admin_listen: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        path.unlink()  # nobody answers: a dead router's socket
    else:
        raise ConfigError(f"admin_listen: {path} is in use by another process")
    finally:
        probe.close()


def _peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return "unix"
        pid, uid, _ = (int.from_bytes(creds[i : i + 4], "little") for i in (0, 4, 8))
        return f"unix:pid:{pid}:uid:{uid}"  # (no "=": a logfmt value unquoted)
    peer = writer.get_extra_info("peername") or ("?", 0)
    host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
    return f"{host}:{peer[1]}"


async def _serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    headers: tuple[tuple[str, str], ...],
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    peer = _peer(writer)
    while True:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request = await _read_request(conn, reader, peer)
        except TimeoutError:
            return
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            reply = AdminReply(status, b'{"error": "bad HTTP request"}\n')
            with contextlib.suppress(h11.LocalProtocolError):  # too broken to answer
                await _send(writer, conn, reply, headers)
            return
        except _TooLarge as exc:
            reply = AdminReply(exc.status, b'{"error": "request too large"}\n')
            await _send(writer, conn, reply, headers)
            return
        if request is None:
            return
        try:
            reply = await handler(request)
        except Exception as exc:  # rule 4
            log.error(fields("admin_error", peer=peer, path=request.path, error=describe(exc)))
            reply = AdminReply(500, b'{"error": "internal error; see the router\'s log"}\n')
        await _send(writer, conn, reply, headers, head_only=request.method == "HEAD")
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, peer: str
) -> AdminRequest | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(_READ_BYTES)
            conn.receive_data(data)
            if not data and head is None and conn.their_state is h11.IDLE:
                return None  # closed between requests
            continue
        if isinstance(event, h11.Request):
            head = event
            # (h11 checks its limit only on a head still incomplete: one read may hold more)
            if len(event.target) + sum(len(k) + len(v) for k, v in event.headers) > MAX_HEAD_BYTES:
                raise _TooLarge(431)
            length = next((v for k, v in event.headers if k == b"content-length"), b"0")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                raise _TooLarge(413)
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                raise _TooLarge(413)
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            target = head.target.decode("ascii", "replace")
            return AdminRequest(
                method=head.method.decode("ascii", "replace"),
                path=target.split("?", 1)[0],
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers},
                body=bytes(body),
                peer=peer,
            )
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:  # h11.PAUSED cannot come before EndOfMessage
            return None


async def _send(
    writer: asyncio.StreamWriter,
    conn: h11.Connection,
    reply: AdminReply,
    headers: tuple[tuple[str, str], ...],
    *,
    head_only: bool = False,
) -> None:
    all_headers = [
        ("content-type", reply.content_type),
        ("content-length", str(len(reply.body))),
        *headers,
        *reply.headers,
    ]
    reason = HTTPStatus(reply.status).phrase.encode()
    head = h11.Response(status_code=reply.status, headers=all_headers, reason=reason)
    writer.write(conn.send(head) or b"")
    if not head_only:  # (a HEAD answer has the GET's length and no body)
        writer.write(conn.send(h11.Data(data=reply.body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
