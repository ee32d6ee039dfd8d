"""No empty ``SSH_MSG_IGNORE`` in front of every packet when the cipher needs none.

After key exchange asyncssh sends an empty ``SSH_MSG_IGNORE`` packet before
every packet it sends (``SSHConnection.send_packet``). That is a defence for
CBC ciphers, whose next IV is the last ciphertext block an attacker has
already seen (RFC 4251 9.3.1). AES-GCM, chacha20-poly1305 and CTR modes have
no such IV, and OpenSSH sends no such packets. For them the IGNORE packet
buys nothing and costs a second encryption per packet: 9% of the router's
CPU per small request in the py-spy profile (``bench/OPTIMISATION.md``), and
the same on a listener's responses.

``drop_needless_ignores`` wraps asyncssh's ``SSHConnection.send_packet`` once
per process. It leaves out exactly that packet — an empty IGNORE on a
connection whose send cipher is not CBC — and passes every other packet
through unchanged. If a later asyncssh sends its IGNORE some other way, the
wrapper never matches and nothing changes.
"""

from __future__ import annotations

from typing import Any

from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import String

_EMPTY = String(b"")
_WRAPPED = "_hostmux_drops_needless_ignores"


def _needs_ignores(conn: SSHConnection) -> bool:
    return str(conn.get_extra_info("send_cipher", "")).endswith("-cbc")


def drop_needless_ignores() -> None:
    """Stop asyncssh's empty IGNORE packets on non-CBC connections (idempotent)."""
    original = SSHConnection.send_packet
    if getattr(original, _WRAPPED, False):
        return

    def send_packet(self: SSHConnection, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY,) and not _needs_ignores(self):
            return
        original(self, pkttype, *args, handler=handler)

    setattr(send_packet, _WRAPPED, True)
    SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
