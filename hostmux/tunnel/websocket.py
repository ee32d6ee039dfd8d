"""SSH over WebSocket: the transport for tunnel clients that may only speak HTTPS.

Binary WebSocket messages carry the SSH byte stream (the chisel design). The
WebSocket protocol is the ``websockets`` library's sans-IO state machine; the
SSH protocol is asyncssh's own connection object, driven through a small
``asyncio.Transport`` shim (``MessageTransport``) — no socketpair, no copy
through the kernel:

* router side: ``WssAcceptor`` is handed to ``asyncssh.listen(tunnel=...)``, so
  SSH over WebSocket gets the same host key, authentication, names and limits
  as plain SSH. Each upgrade request for ``/_hostmux/ssh`` on the router's own
  host becomes an in-process upstream for the ordinary HTTP relay
  (``WssAcceptor.open_stream``): the relay forwards the upgrade, the endpoint
  answers ``101`` and then speaks WebSocket frames.
* client side: ``WssConnector`` is handed to ``asyncssh.connect(tunnel=...)``;
  it dials the WebSocket (HTTP proxy from ``HTTPS_PROXY`` honoured by
  ``websockets``) and drives asyncssh's client connection the same way.

Back-pressure comes from SSH flow control, not from the shim: asyncssh ignores
``pause_writing`` (its connection does nothing with it), so the shim never
calls it and reports an empty write buffer. Each SSH write is framed at once
and queued for a pump task, which waits while the stream under it is slow
(``send_all`` on the router's in-process pipe, ``ws.send`` on the client);
what waits in that queue is bounded by the SSH channel windows, since asyncssh
sends channel data only as far as the peer's window, and the peer reopens it
only as its reader consumes. The shim stops reading while its transport is
paused (``pause_reading``), though asyncssh does not pause its connection's
transport today. A client that never completes the WebSocket handshake is
dropped after ``handshake_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from websockets.exceptions import InvalidHandshake, InvalidState, ProtocolError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from hostmux.log import fields
from hostmux.relay import ByteStream

log = logging.getLogger("hostmux.wss")

WSS_PATH = "/_hostmux/ssh"
# The largest message accepted (a peer's message is at most FLUSH_BYTES, or
# one SSH packet where that is longer: the router's are at most 128 KiB).
MAX_MESSAGE_BYTES = 1024 * 1024
# A sender's message: one loop turn of SSH writes, cut before it would pass
# this. Past ~200 KiB, framing a message here cost 25x more per byte (every
# buffer that large is fresh memory from the kernel: bench/OPTIMISATION.md).
FLUSH_BYTES = 128 * 1024
# Frames whose payload is SSH bytes: binary messages, fragmented or not.
_SSH_OPCODES = (Opcode.BINARY, Opcode.CONT)
# A client has this long to finish the WebSocket handshake after its request.
HANDSHAKE_TIMEOUT_S = 10.0
# After the endpoint's close frame, the client has this long to answer with its
# own, and the last frames this long to leave (websockets' own default).
CLOSE_TIMEOUT_S = 10.0


class MessageTransport(asyncio.Transport):
    """asyncio transport for asyncssh whose bytes go out as WebSocket messages.

    What asyncssh writes during one turn of the event loop goes out as one
    binary message at the end of that turn (``loop.call_soon``), as
    ``hostmux.tunnel.coalescing`` does for plain TCP: asyncssh writes each SSH
    packet on its own, and a message each cost a frame header, a mask (client
    side), a TLS record and a socket write. A write that would take the
    message past ``FLUSH_BYTES`` sends what came before it first.
    ``pause``/``resume``, when given, pause and resume reading of the
    transport under the WebSocket.
    """

    def __init__(
        self,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        peer: tuple[str, int],
        *,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._send = send
        self._close_cb = close
        self._peer = peer
        self._pause, self._resume = pause, resume
        self._closing = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._loop = asyncio.get_running_loop()
        self._reading_paused = asyncio.Event()
        self._reading_paused.set()  # set = reading allowed

    def __repr__(self) -> str:
        return f"<MessageTransport {self._peer} pending={self._pending_bytes}>"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "sockname":
            return ("0.0.0.0", 0)
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        elif self._pending_bytes + len(data) > FLUSH_BYTES:
            self._flush()  # a full message now (the flush already scheduled sends the rest)
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return  # sent already (a full turn, or close), or dropped by abort
        self._pending = []
        self._pending_bytes = 0
        self._send(pending[0] if len(pending) == 1 else b"".join(pending))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._flush()
            self._closing = True
            self._close_cb()

    def abort(self) -> None:
        self._pending = []
        self._pending_bytes = 0
        self.close()

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self._reading_paused.clear()
        if self._pause is not None:
            self._pause()

    def resume_reading(self) -> None:
        self._reading_paused.set()
        if self._resume is not None:
            self._resume()

    def is_reading(self) -> bool:
        return self._reading_paused.is_set()

    async def wait_readable(self) -> None:
        await self._reading_paused.wait()

    def get_write_buffer_size(self) -> int:
        return 0


class _InProcessServer:
    """What ``asyncssh.listen(tunnel=...)`` expects back from ``create_server``."""

    sockets: list[object] = []

    def __init__(self, acceptor: WssAcceptor) -> None:
        self._acceptor = acceptor

    def close(self) -> None:
        self._acceptor.factory = None

    async def wait_closed(self) -> None:
        return None

    def get_addresses(self) -> list[tuple[str, int]]:
        return []

    def get_port(self) -> int:
        return 0


class WssAcceptor:
    """The router's SSH-over-WebSocket endpoint (see the module docstring)."""

    def __init__(self, *, handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.factory: Callable[[str, int], Any] | None = None
        self._handshake_timeout_s = handshake_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<WssAcceptor sessions={len(self._tasks)}>"

    async def create_server(
        self, factory: Callable[[str, int], Any], host: str, port: int, **_: object
    ) -> _InProcessServer:
        """Called by asyncssh.listen: remember how to make a server connection."""
        self.factory = factory
        return _InProcessServer(self)

    async def open_stream(self, peer_ip: str, peer_port: int) -> ByteStream:
        """An upstream for the relay: the far end of a pipe served by this endpoint."""
        near, far = _pipe(f"wss:{peer_ip}:{peer_port}")
        task = asyncio.ensure_future(self._serve(far, (peer_ip, peer_port)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return near

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)

    async def _serve(self, stream: _PipeEnd, peer: tuple[str, int]) -> None:
        ws = ServerProtocol(max_size=MAX_MESSAGE_BYTES)
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                request = await _read_handshake(ws, stream)
            if request is None or request.path != WSS_PATH or self.factory is None:
                return
            ws.send_response(ws.accept(request))
            await stream.send_all(b"".join(ws.data_to_send()))
            if ws.handshake_exc is not None:
                return
            log.info(fields("wss_open", peer=f"{peer[0]}:{peer[1]}"))
            await _carry_ssh(ws, stream, self.factory(peer[0], peer[1]), peer)
        except (TimeoutError, OSError, ConnectionError, InvalidHandshake, InvalidState) as exc:
            log.info(fields("wss_dropped", peer=f"{peer[0]}:{peer[1]}", reason=type(exc).__name__))
        finally:
            stream.close()


async def _read_handshake(ws: ServerProtocol, stream: _PipeEnd) -> Request | None:
    while True:
        data = await stream.receive()
        if not data:
            return None
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                return event


async def _carry_ssh(
    ws: ServerProtocol | Any, stream: ByteStream, ssh: Any, peer: tuple[str, int]
) -> None:
    """Pump bytes between WebSocket frames on ``stream`` and the asyncssh protocol ``ssh``."""
    await _FramePump(ws, stream, ssh).run(peer)


class _FramePump:
    """One SSH connection carried in WebSocket frames over a byte stream (server side).

    asyncssh writes through ``send`` (a binary frame each) and closes through
    ``close``; ``_write`` flushes what is queued to the stream, waiting while
    the peer is slow; ``_read`` feeds the frames received to asyncssh.
    """

    def __init__(self, ws: ServerProtocol | Any, stream: ByteStream, ssh: Any) -> None:
        self._ws = ws
        self._stream = stream
        self._ssh = ssh
        self._closed = asyncio.Event()
        self._out: list[bytes] = []
        self._flushing = asyncio.Event()
        self._sending = False  # the writer task is in a send, maybe waiting for room

    async def run(self, peer: tuple[str, int]) -> None:
        transport = MessageTransport(self._send, self._close, peer)
        self._ssh.connection_made(transport)
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self._write())
                goodbye = tg.create_task(self._goodbye_on_going_away())
                reader = tg.create_task(self._read(transport))
                closed = tg.create_task(self._closed.wait())
                await asyncio.wait((reader, closed), return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    # We sent the close frame (SSH closed, or shutdown): the client has
                    # CLOSE_TIMEOUT_S to answer with its own (RFC 6455 7.1.1), however
                    # dead its connection is.
                    await asyncio.wait((reader,), timeout=CLOSE_TIMEOUT_S)
                    reader.cancel()
                closed.cancel()
                goodbye.cancel()
                self._closed.set()
                self._flushing.set()
                await asyncio.wait((writer,), timeout=CLOSE_TIMEOUT_S)  # the last frames
                writer.cancel()
        except* (OSError, ConnectionError, ProtocolError):
            pass
        finally:
            self._ssh.connection_lost(None)

    def _send(self, data: bytes) -> None:
        try:
            self._ws.send_binary(data)
        except InvalidState:
            return
        self._queue(self._ws.data_to_send())

    async def _goodbye_on_going_away(self) -> None:
        """The router is shutting down: close with 1001, as the splice would (``_read``
        ends on the client's close frame, or the relay's grace ends it)."""
        wait = getattr(self._stream, "wait_going_away", None)
        if wait is not None:
            await wait()
            self._close(CloseCode.GOING_AWAY)

    def _close(self, code: int = CloseCode.NORMAL_CLOSURE) -> None:
        with contextlib.suppress(InvalidState, ProtocolError):
            self._ws.send_close(code)
            self._out.extend(self._ws.data_to_send())
        self._closed.set()
        self._flushing.set()

    def _queue(self, data: list[bytes]) -> None:
        if not data:
            return
        if not self._out and not self._sending and not self._stream.must_drain():
            # Nothing waiting and room below: written now, not by the writer task.
            try:
                self._stream.write(data[0] if len(data) == 1 else b"".join(data))
            except (OSError, ConnectionError):
                self._closed.set()  # the reader sees the end next
                self._flushing.set()
            return
        self._out.extend(data)
        self._flushing.set()

    async def _write(self) -> None:
        while True:
            await self._flushing.wait()
            self._flushing.clear()
            while self._out:
                chunk = b"".join(self._out)
                self._out.clear()
                self._sending = True
                try:
                    await self._stream.send_all(chunk)  # back-pressure: waits while slow
                finally:
                    self._sending = False
            if self._closed.is_set():
                return

    async def _read(self, transport: MessageTransport) -> None:
        ws = self._ws
        while True:
            if not transport.is_reading():
                await transport.wait_readable()
            data = await self._stream.receive()
            if not data:
                ws.receive_eof()
                return
            ws.receive_data(data)
            for event in ws.events_received():
                if not isinstance(event, Frame):
                    continue
                if event.opcode in _SSH_OPCODES:
                    self._ssh.data_received(bytes(event.data))
                elif event.opcode is Opcode.TEXT:
                    ws.fail(CloseCode.UNSUPPORTED_DATA, "SSH travels in binary messages")
                    self._queue(ws.data_to_send())
                    return
                elif event.opcode is Opcode.CLOSE:
                    self._queue(ws.data_to_send())  # the protocol's answering close frame
                    return
            self._queue(ws.data_to_send())  # pongs and close replies from the protocol


class _PipeEnd:
    """One end of an in-process byte pipe: a ``ByteStream`` with a bounded queue.

    The relay's end can ``adopt`` the browser's stream once the ``101`` has
    gone out: from then on the endpoint's end reads and writes that stream
    itself (``_direct``), and the relay only waits for the session to end.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.peer: _PipeEnd | None = None
        self._chunks: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._eof = False
        self._closed = False
        self._direct: ByteStream | None = None  # the adopted browser stream (endpoint's end)
        self._going_away: asyncio.Event | None = None
        self._adopted = asyncio.Event()
        self._ended = asyncio.Event()

    def __repr__(self) -> str:
        return f"<_PipeEnd {self.label} queued={len(self._chunks)} direct={self._direct!r}>"

    # reading side ------------------------------------------------------------

    async def receive(self) -> bytes:
        while not self._chunks:
            if self._direct is not None:
                return await self._direct.receive()
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        if len(self._chunks) <= _PIPE_LOW_WATER:
            self._writable.set()
        return data

    def _deliver(self, data: bytes) -> None:
        self._chunks.append(data)
        self._readable.set()
        if len(self._chunks) >= _PIPE_HIGH_WATER:
            self._writable.clear()

    def _end(self) -> None:
        self._eof = True
        self._readable.set()
        self._writable.set()

    # writing side (into the peer) ----------------------------------------------

    @property
    def _other(self) -> _PipeEnd:
        assert self.peer is not None
        return self.peer

    def write(self, data: bytes) -> None:
        if self._direct is not None:
            self._direct.write(data)
            return
        if self._closed or self._other._eof:
            raise ConnectionResetError(f"{self.label} is closed")
        if data:
            self._other._deliver(bytes(data))

    def must_drain(self) -> bool:
        if self._direct is not None:
            return self._direct.must_drain()
        return not self._other._writable.is_set()

    async def drain(self) -> None:
        if self._direct is not None:
            await self._direct.drain()
        else:
            await self._other._writable.wait()

    async def send_all(self, data: bytes) -> None:
        self.write(data)
        if self.must_drain():
            await self.drain()

    async def send_eof(self) -> None:
        if self._direct is not None:
            await self._direct.send_eof()
        else:
            self._other._end()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ended.set()
            if self._direct is None:
                self._end()
                self._other._end()

    def abort(self) -> None:
        self.close()  # nothing is queued outside the two ends

    # handing the browser's stream to the endpoint -----------------------------------

    async def adopt(
        self,
        client: ByteStream,
        *,
        client_rest: bytes,
        own_rest: bytes,
        going_away: asyncio.Event | None,
    ) -> None:
        """Called on the relay's end after the ``101``: the endpoint takes ``client``
        over; returns when the endpoint's session ended.

        ``own_rest`` (read behind the ``101`` by the relay's parser) and what is
        still queued here go to the browser first, in order; ``client_rest``
        (the browser's bytes behind its request) goes to the endpoint first.
        Until the first ``await`` nothing else runs, so nothing can come between.
        """
        far = self._other
        backlog = [own_rest, *self._chunks]
        self._chunks.clear()
        for data in backlog:
            if data:
                client.write(data)
        if client_rest:
            far._deliver(client_rest)
        far._direct = client
        far._going_away = going_away
        far._adopted.set()
        far._readable.set()  # a receive waiting on the pipe goes to ``client`` now
        self._writable.set()  # so does a write waiting for room in it
        if client.must_drain():
            await client.drain()
        await far._ended.wait()

    async def wait_going_away(self) -> None:
        """Returns when the relay that handed this end its browser is shutting down."""
        await self._adopted.wait()
        if self._going_away is None:
            await asyncio.Event().wait()  # never
        else:
            await self._going_away.wait()


# A pipe holds at most this many chunks before its writer must wait.
_PIPE_HIGH_WATER = 32
_PIPE_LOW_WATER = 8


def _pipe(label: str) -> tuple[_PipeEnd, _PipeEnd]:
    near, far = _PipeEnd(label + ":relay"), _PipeEnd(label + ":wss")
    near.peer, far.peer = far, near
    return near, far


class WssConnector:
    """The client side: ``asyncssh.connect(host, port, tunnel=WssConnector(url))``.

    Resource handling: the WebSocket and its two pump tasks live as long as
    the SSH connection; closing either side ends both.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: Any = None,
        headers: dict[str, str] | None = None,
        open_timeout_s: float = 15.0,
    ) -> None:
        self._url = url
        self._ssl = ssl_context
        self._headers = headers or {}
        self._open_timeout_s = open_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<WssConnector {self._url}>"

    async def create_connection(
        self, factory: Callable[[], Any], host: str, port: int, **_: object
    ) -> tuple[MessageTransport, Any]:
        """Called by asyncssh.connect: open the WebSocket and start the SSH protocol on it."""
        from websockets.asyncio.client import connect

        from hostmux.tunnel.wss_client import SshWebSocket

        kwargs: dict[str, Any] = {}
        if self._url.startswith("wss://") and self._ssl is not None:
            kwargs["ssl"] = self._ssl
        ws = await connect(
            self._url,
            additional_headers=self._headers,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,  # SSH is encrypted: nothing to compress
            open_timeout=self._open_timeout_s,
            ping_interval=None,  # SSH keepalives do this job
            create_connection=SshWebSocket,
            **kwargs,
        )
        assert isinstance(ws, SshWebSocket)
        transport = MessageTransport(
            ws.send_ssh, partial(self._close, ws), _peer_address(ws),
            pause=ws.transport.pause_reading, resume=ws.transport.resume_reading,
        )  # fmt: skip
        protocol = factory()
        protocol.connection_made(transport)
        ws.attach(protocol)
        return transport, protocol

    def _close(self, ws: Any) -> None:
        """The SSH side closed: the closing handshake, in the background (bounded by
        websockets' close timeout)."""
        task = asyncio.ensure_future(ws.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _peer_address(ws: Any) -> tuple[str, int]:
    """The IP address and port the WebSocket is connected to (a proxy's, through one).

    asyncssh parses a transport's peer name as an IP address, so the host name
    the user gave (``--router tunnels.example.org:2222``) cannot stand in for it.
    """
    peer = ws.transport.get_extra_info("peername") if ws.transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return ("0.0.0.0", 0)  # a socket that is already gone: the handshake fails next
