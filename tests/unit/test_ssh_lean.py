"""``router.ssh.lean``: what an authenticated connection stops holding, and that it still works.

A real asyncssh server and client over loopback in one process, as in
``test_channel_stream``. The server sheds its connection's start-up state in
``auth_completed``, as the router does; the client then moves data through a
channel while both sides re-key several times (``rekey_bytes``), the case the
dropped key exchange packets matter for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import OrderedDict, deque
from typing import Any

import asyncssh

from router.ssh import lean

from .asyncio_bounded import run

DEADLINE_S = 20.0
# Re-key after this many bytes each way: 2 MiB through the channel re-keys ~30 times.
REKEY_BYTES = 64 * 1024
PAYLOAD = os.urandom(2 * 1024 * 1024)


class Echo(asyncssh.SSHTCPSession[bytes]):
    """The server's end of a direct-tcpip channel: sends back what it gets, then EOF."""

    def __init__(self) -> None:
        self._chan: Any = None

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._chan.write(data)

    def eof_received(self) -> bool:
        self._chan.write_eof()
        return True


class Server(asyncssh.SSHServer):
    """Public-key login for one key; sheds in ``auth_completed`` as the router's server does."""

    def __init__(self, key: asyncssh.SSHKey, report: dict[str, Any]) -> None:
        self._key = key
        self._report = report
        self._conn: Any = None
        self._shared: object | None = None

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        self._shared = lean.listen_options(conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data == self._key.public_data

    def auth_completed(self) -> None:
        conn = self._conn
        rebuilt = getattr(conn, lean.OPTIONS)
        self._report["rebuilt_was_own"] = rebuilt is not self._shared
        self._report["dropped"] = lean.shed_after_auth(conn, self._shared)
        self._report["options_shared"] = getattr(conn, lean.OPTIONS) is self._shared
        self._report["kexinit"] = [getattr(conn, name) for name in lean.KEXINIT]
        self._report["conn"] = conn

    def connection_requested(self, *_: object) -> Echo:
        return Echo()


async def _echo_through(conn: asyncssh.SSHClientConnection, payload: bytes) -> bytes:
    reader, writer = await conn.open_connection("app", 80)
    writer.write(payload)
    writer.write_eof()
    got: bytes = await reader.read()
    writer.close()
    return got


def test_a_shed_connection_keeps_working_through_many_rekeys() -> None:
    report: dict[str, Any] = {}

    async def scenario() -> None:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key], gss_host=None,
            server_factory=lambda: Server(client_key, report), rekey_bytes=REKEY_BYTES,
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        try:
            async with asyncssh.connect(
                "127.0.0.1", port, known_hosts=None, username="t", client_keys=[client_key],
                agent_path=None, rekey_bytes=REKEY_BYTES,
            ) as conn:  # fmt: skip
                for _ in range(2):  # two channels, one after the other
                    got = await _echo_through(conn, PAYLOAD)
                    assert hashlib.sha256(got).digest() == hashlib.sha256(PAYLOAD).digest()
                server_conn = report["conn"]
                # Each re-key set both packets anew (the shed had emptied them).
                assert all(getattr(server_conn, name) for name in lean.KEXINIT)
        finally:
            server.close()

    run(scenario(), DEADLINE_S)
    assert report["rebuilt_was_own"], "asyncssh no longer rebuilds options per connection"
    assert report["options_shared"]
    assert report["kexinit"] == [b"", b""]


def test_every_part_is_found_in_the_installed_asyncssh() -> None:
    """An asyncssh that renames one of the attributes only loses the saving; this says so."""
    report: dict[str, Any] = {}

    async def scenario() -> None:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[host_key], gss_host=None,
            server_factory=lambda: Server(client_key, report),
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        try:
            async with asyncssh.connect(
                "127.0.0.1", port, known_hosts=None, username="t", client_keys=[client_key],
                agent_path=None,
            ) as conn:  # fmt: skip
                assert await _echo_through(conn, b"ping") == b"ping"
                server_conn = report["conn"]
                assert type(getattr(server_conn, lean.EXTENSIONS)) is OrderedDict
                for name in lean.CLIENT_SETS:
                    assert getattr(server_conn, name) == frozenset()
                close_event = getattr(server_conn, lean.CLOSE_EVENT)
                assert type(close_event._waiters) is list
        finally:
            server.close()

    run(scenario(), DEADLINE_S)
    # options, two kexinit packets, the extensions, the client-only sets, the close event
    assert report["dropped"] == 1 + len(lean.KEXINIT) + 1 + len(lean.CLIENT_SETS) + 1


def test_a_lean_event_still_wakes_its_waiters() -> None:
    async def scenario() -> None:
        event = asyncio.Event()
        assert lean.lean_event(event) == 1
        assert lean.lean_event(event) == 0  # already lean
        waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
        await asyncio.sleep(0)  # (they start waiting: no timing, one loop turn)
        assert len(event._waiters) == 3
        event.set()
        assert await asyncio.gather(*waiters) == [True, True, True]
        assert event._waiters == []
        busy = asyncio.Event()
        busy._waiters.append(asyncio.get_running_loop().create_future())
        assert lean.lean_event(busy) == 0  # one with waiters is left as it is
        assert type(busy._waiters) is deque

    run(scenario())
