"""The SSH listener's TCP transport: what asyncssh writes in one loop turn goes in one send.

asyncssh writes every SSH packet to its transport as soon as it is built, and
puts an ``SSH_MSG_IGNORE`` packet in front of each one: relaying one small
request cost the router two ``send`` calls, and woke the tunnel client (which
walks all its channels on every wake-up) twice. ``CoalescingTransport`` keeps
what asyncssh writes during one turn of the event loop and sends it as one
write at the end of that turn (``loop.call_soon``), so a request's packets —
and under load many requests' packets — share one segment, as sshd's are.
Nothing waits longer than the rest of the current loop turn.

``CoalescingListener`` is handed to ``asyncssh.listen(tunnel=...)`` (the hook
asyncssh offers for custom transports, also used by ``hostmux.tunnel.websocket``): it listens on
TCP like asyncssh would and wraps each accepted connection's transport.
``CoalescingConnector`` does the same for ``asyncssh.connect(tunnel=...)``
(``hostmux-listener``'s side of a tunnel).

Resource handling: ``close`` and ``write_eof`` send what is pending first;
``abort`` drops it, as the socket's own ``abort`` drops its buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

# The listening socket's accept queue, as asyncssh's own listener (which uses
# asyncio's default, 100).
_BACKLOG = 100

# Reads acknowledged at once on a new SSH connection: its handshake (version,
# KEXINIT, ECDH, NEWKEYS, service and auth requests, the forward) is ~8 reads.
_HANDSHAKE_READS = 12
# Linux's TCP_QUICKACK (the socket module exports it only on some builds).
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


class CoalescingTransport(asyncio.Transport):
    """An ``asyncio.Transport`` that sends one loop turn's writes in one write."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        return f"<CoalescingTransport pending={len(self._pending)} {self._transport!r}>"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return  # already sent by close() or write_eof(), or dropped by abort()
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self._pending)) + self._transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class _Handover(asyncio.Protocol):
    """Hands the accepted socket to the SSH connection, with a wrapped transport.

    The first ``quick_ack_reads`` reads pass through here, each acknowledged at
    once (``TCP_QUICKACK``): OpenSSH sends the small packets of its handshake
    back to back without ``TCP_NODELAY``, so its second packet waited for our
    delayed ACK — 40 ms, twice per tunnel set-up. After those reads the socket
    delivers data to the SSH connection directly, with no extra call per read.
    """

    def __init__(self, ssh: asyncio.Protocol, *, quick_ack_reads: int = 0) -> None:
        self._ssh = ssh
        self._quick_acks_left = quick_ack_reads
        self._transport: asyncio.Transport | None = None
        self._socket: Any = None  # the transport's socket (uvloop: a socket-like object)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A socket transport (uvloop's do not subclass asyncio.Transport).
        stream = cast(asyncio.Transport, transport)
        self._transport = stream
        self._socket = stream.get_extra_info("socket")
        if self._quick_acks_left <= 0:
            stream.set_protocol(self._ssh)
        self._ssh.connection_made(CoalescingTransport(stream))

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._quick_acks_left -= 1
        with contextlib.suppress(OSError, AttributeError):
            self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        if self._quick_acks_left <= 0:
            self._transport.set_protocol(self._ssh)
        self._ssh.data_received(data)

    def eof_received(self) -> bool | None:
        return self._ssh.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._ssh.connection_lost(exc)

    def pause_writing(self) -> None:
        self._ssh.pause_writing()

    def resume_writing(self) -> None:
        self._ssh.resume_writing()


def accepted_ssh_connection(ssh: asyncio.Protocol) -> asyncio.Protocol:
    """The protocol for an accepted TCP socket that carries the SSH connection ``ssh``:
    coalesced writes, and a quickly acknowledged handshake."""
    return _Handover(ssh, quick_ack_reads=_HANDSHAKE_READS)


class CoalescingListener:
    """What ``asyncssh.listen(tunnel=...)`` calls to listen on TCP with coalesced writes.

    With ``sock`` (a socket already bound, e.g. inherited from a supervisor that
    binds once for several processes) it accepts there instead of binding.
    """

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock

    def __repr__(self) -> str:
        return f"<CoalescingListener sock={self._sock.fileno() if self._sock else None}>"

    async def create_server(
        self, factory: Callable[[str, int], asyncio.Protocol], host: str, port: int, **_: object
    ) -> asyncio.Server:
        """Called by asyncssh.listen with its per-connection factory."""
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return accepted_ssh_connection(factory("", 0))

        if self._sock is not None:
            return await loop.create_server(protocol, sock=self._sock, backlog=_BACKLOG)
        return await loop.create_server(protocol, host, port, backlog=_BACKLOG, reuse_address=True)


class CoalescingConnector:
    """What ``asyncssh.connect(tunnel=...)`` calls to dial TCP with coalesced writes."""

    def __repr__(self) -> str:
        return "<CoalescingConnector>"

    async def create_connection(
        self, factory: Callable[[], asyncio.Protocol], host: str, port: int, **_: object
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        """Called by asyncssh.connect with its connection factory; returns its connection."""
        ssh = factory()
        loop = asyncio.get_running_loop()
        transport, _handover = await loop.create_connection(lambda: _Handover(ssh), host, port)
        return transport, ssh
