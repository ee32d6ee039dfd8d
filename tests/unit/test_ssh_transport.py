"""``CoalescingTransport``: one loop turn's writes leave as one write, in order.

Plain functions driving asyncio scenarios with ``asyncio.run`` (the suite's
async tests run under trio). The wrapped transport is a small recording
class. "The end of the loop turn" is reached by awaiting a future resolved by
a ``call_soon`` queued after the writes: asyncio runs ``call_soon`` callbacks
in order, so the flush has run by then — an ordering, not a wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from router._ssh_transport import CoalescingTransport

TEST_DEADLINE_S = 10.0  # each scenario takes microseconds; this only trips on a hang


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_DEADLINE_S):
            await scenario

    asyncio.run(bounded())


class RecordingTransport(asyncio.Transport):
    """Records what reaches the socket: writes, EOF, close and abort, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[object] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.log.append(bytes(data))

    def write_eof(self) -> None:
        self.log.append("eof")

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.log.append("close")
        self.closing = True

    def abort(self) -> None:
        self.log.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 2222)}.get(name, default)


async def end_of_turn() -> None:
    """Resolves after every callback queued so far (the pending flush included)."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


def test_writes_of_one_turn_leave_as_one_write_in_order() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        corked = CoalescingTransport(inner)
        corked.write(b"ignore-packet|")
        corked.write(bytearray(b"data-packet|"))
        corked.writelines([b"a", memoryview(b"b")])
        assert inner.log == []  # nothing leaves before the turn ends
        assert corked.get_write_buffer_size() == len(b"ignore-packet|data-packet|ab") + 7
        await end_of_turn()
        assert inner.log == [b"ignore-packet|data-packet|ab"]
        corked.write(b"next turn")
        await end_of_turn()
        assert inner.log == [b"ignore-packet|data-packet|ab", b"next turn"]

    run(scenario())


def test_close_and_write_eof_send_what_is_pending_first() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        corked = CoalescingTransport(inner)
        corked.write(b"last words")
        corked.write_eof()
        assert inner.log == [b"last words", "eof"]
        corked.write(b"disconnect")
        corked.close()
        await end_of_turn()  # the flush queued by the write finds nothing left to send
        assert inner.log == [b"last words", "eof", b"disconnect", "close"]

    run(scenario())


def test_abort_drops_what_is_pending() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        corked = CoalescingTransport(inner)
        corked.write(b"never sent")
        corked.abort()
        await end_of_turn()
        assert inner.log == ["abort"]

    run(scenario())


def test_writes_to_a_transport_closed_underneath_are_dropped() -> None:
    async def scenario() -> None:
        inner = RecordingTransport()
        corked = CoalescingTransport(inner)
        corked.write(b"too late")
        inner.closing = True  # the peer reset the connection meanwhile
        await end_of_turn()
        assert inner.log == []
        assert corked.is_closing()
        assert corked.get_extra_info("peername") == ("127.0.0.1", 2222)

    run(scenario())
