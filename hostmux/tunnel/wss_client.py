"""The tunnel client's WebSocket: websockets' asyncio client, frames straight to asyncssh.

``websockets.asyncio.client.connect`` does the opening handshake (TLS, an
HTTP proxy from ``HTTPS_PROXY``, the ``101``); ``SshWebSocket`` is the
connection class it is asked to build (its ``create_connection`` option).
After the handshake it carries one SSH byte stream:

* incoming: each binary frame's payload goes to the SSH protocol's
  ``data_received`` in the same callback that parsed it — not through
  websockets' message queue and a reading task, which cost a queue, a future
  and a task switch per message. Frames that arrive before the SSH protocol
  is attached (the router's version line can come with the ``101``) wait in
  ``_early``. A text message is no SSH: the connection fails with 1003.
* outgoing: ``send_ssh`` frames one loop turn of SSH writes as one masked
  binary frame (``MessageTransport`` coalesces them) and writes it to the
  transport at once: one TLS record and one socket write per turn.

websockets' sans-IO protocol still does all of RFC 6455: masking (with its C
speedups), frame parsing and ``max_size``, pings, the close handshake.

Back-pressure comes from SSH flow control, as on the router's side
(``hostmux.tunnel.websocket``): what the transport holds is bounded by the
SSH channel windows.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidState, ProtocolError
from websockets.frames import CloseCode, Frame, Opcode

_DATA = (Opcode.BINARY, Opcode.CONT)


class SshWebSocket(ClientConnection):
    """A client WebSocket connection whose binary frames carry one SSH connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssh: asyncio.Protocol | None = None
        self._early: list[bytes] = []
        self._ssh_lost = False

    def attach(self, ssh: asyncio.Protocol) -> None:
        """From now on, frames go to ``ssh`` (those that came already first)."""
        self._ssh = ssh
        early, self._early = self._early, []
        for data in early:
            ssh.data_received(data)
        if self.connection_lost_waiter.done():  # gone before it was attached
            self._tell_ssh_lost()

    def send_ssh(self, data: bytes) -> None:
        """Send ``data`` as one binary message, now; dropped once the WebSocket is closing."""
        try:
            self.protocol.send_binary(data)
        except InvalidState:
            return
        try:
            self.send_data()
        except Exception:  # the transport failed: connection_lost follows
            self.transport.abort()

    def process_event(self, event: Any) -> None:
        if self.response is None or not isinstance(event, Frame):
            super().process_event(event)  # the handshake's response
        elif event.opcode in _DATA:
            if self._ssh is not None:
                self._ssh.data_received(bytes(event.data))
            else:
                self._early.append(bytes(event.data))
        elif event.opcode is Opcode.TEXT:
            with contextlib.suppress(InvalidState, ProtocolError):
                self.protocol.fail(CloseCode.UNSUPPORTED_DATA, "SSH travels in binary messages")
                self.send_data()
        else:
            super().process_event(event)  # pongs (pings and closes are the protocol's)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._tell_ssh_lost()

    def _tell_ssh_lost(self) -> None:
        if self._ssh is not None and not self._ssh_lost:
            self._ssh_lost = True
            self._ssh.connection_lost(None)
