"""A channel opened the moment a forward is granted reaches an asyncssh client.

An asyncssh client (hostmux-listener) registers a remote forward only when the
task that asked for it resumes; a channel open read before that (the router's
grant and a request that reached the new tunnel, read in one go) is answered
"No such listener": a 502 for that request, seen in a rolling restart under
load. The router tries once more, as the forward has confirmed no open yet
(``router.ssh.server._open_channel``). Here a
real asyncssh server sends the channel open, with the router's opener, in the
same loop turn as the grant (just before it), so the client reads the open
before its forward is registered; a real asyncssh client then forwards it to
an echo server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import asyncssh

from router.ssh.server import PendingOpens, _tcp_opener

from .asyncio_bounded import run

DEADLINE_S = 30.0
WINDOW = 1 << 20


class Granted(asyncssh.SSHListener):
    """A forward that binds nothing (as the router's ``VirtualForward``)."""

    def get_port(self) -> int:
        return 80

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class GrantThenOpen(asyncssh.SSHServer):
    """Grants any forward and opens a channel on it right after (the router's opener)."""

    def __init__(self, opened: asyncio.Future[bytes]) -> None:
        self._opened = opened
        self._conn: Any = None

    def connection_made(self, conn: Any) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        return False

    def server_requested(
        self, listen_host: str, listen_port: int
    ) -> Coroutine[Any, Any, asyncssh.SSHListener]:
        # As the router: the grant is an awaitable; asyncssh sends it when it returns.
        async def grant() -> asyncssh.SSHListener:
            opener = _tcp_opener(self._conn, listen_host, listen_port, WINDOW, PendingOpens(8))
            asyncio.ensure_future(self._echo(opener)).add_done_callback(self._done)
            # One loop turn: the task's first step sends the channel open, then the grant
            # goes. The client reads the open before its task that asked for the forward
            # has resumed, as a listener can when both arrive together (a yield for order,
            # not a timed wait).
            await asyncio.sleep(0)
            return Granted()

        return grant()

    async def _echo(self, opener: Any) -> bytes:
        stream = await opener("127.0.0.1", 40000)
        await stream.send_all(b"ping")
        answer: bytes = await stream.receive()
        return answer

    def _done(self, task: asyncio.Future[bytes]) -> None:
        if task.exception() is not None:
            self._opened.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            self._opened.set_result(task.result())


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(4))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def test_a_channel_opened_as_the_forward_is_granted_reaches_the_app() -> None:
    async def scenario() -> bytes:
        app = await _echo_server()
        app_port = app.sockets[0].getsockname()[1]
        opened: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            gss_host=None, server_factory=lambda: GrantThenOpen(opened),
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        try:
            async with asyncssh.connect(
                "127.0.0.1", port, known_hosts=None, username="t", agent_path=None,
                client_keys=None,
            ) as conn:  # fmt: skip
                await conn.forward_remote_port("fresh", 80, "127.0.0.1", app_port)
                return await opened
        finally:
            server.close()
            app.close()

    assert run(scenario(), DEADLINE_S) == b"ping"
