"""The WebSocket transport's pieces: one message per loop turn, and the pipe's hand-over.

``MessageTransport`` sends what asyncssh writes during one loop turn as one
message, cut before ``FLUSH_BYTES``; ``_PipeEnd.adopt`` hands the browser's
stream to the router's endpoint after the ``101`` with nothing lost or
reordered. Plain functions driving asyncio scenarios (``asyncio_bounded``);
"the end of the loop turn" is a future resolved by a ``call_soon`` queued after
the writes (asyncio runs those callbacks in order: an ordering, not a wait).
The endpoint's real traffic is in tests/integration/test_wss.py.
"""

from __future__ import annotations

import asyncio

from hostmux.tunnel.websocket import FLUSH_BYTES, MessageTransport, _pipe

from .asyncio_bounded import run


async def _turn_ends() -> None:
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


def _transport(sent: list[bytes], closed: list[bool]) -> MessageTransport:
    return MessageTransport(sent.append, lambda: closed.append(True), ("127.0.0.1", 1))


def test_one_loop_turn_of_writes_is_one_message_in_order() -> None:
    async def scenario() -> list[bytes]:
        sent: list[bytes] = []
        transport = _transport(sent, [])
        transport.write(b"ab")
        transport.write(bytearray(b"cd"))
        transport.writelines([b"e", memoryview(b"f")])
        assert sent == []  # nothing before the turn ends
        await _turn_ends()
        transport.write(b"g")
        await _turn_ends()
        return sent

    assert run(scenario()) == [b"abcdef", b"g"]


def test_a_message_is_cut_before_it_passes_the_flush_size() -> None:
    async def scenario() -> list[bytes]:
        sent: list[bytes] = []
        transport = _transport(sent, [])
        packet = b"x" * (FLUSH_BYTES // 3 + 1)
        for _ in range(4):
            transport.write(packet)
        await _turn_ends()
        return sent

    sent = run(scenario())
    assert [len(m) for m in sent] == [2 * (FLUSH_BYTES // 3 + 1)] * 2
    assert all(len(m) <= FLUSH_BYTES for m in sent)


def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[list[bytes], list[bool], list[bytes], list[bool]]:
        sent: list[bytes] = []
        closed: list[bool] = []
        transport = _transport(sent, closed)
        transport.write(b"last words")
        transport.close()
        transport.write(b"too late")
        aborted_sent: list[bytes] = []
        aborted_closed: list[bool] = []
        aborted = _transport(aborted_sent, aborted_closed)
        aborted.write(b"dropped")
        aborted.abort()
        await _turn_ends()
        return sent, closed, aborted_sent, aborted_closed

    sent, closed, aborted_sent, aborted_closed = run(scenario())
    assert (sent, closed) == ([b"last words"], [True])
    assert (aborted_sent, aborted_closed) == ([], [True])


class _Browser:
    """A ``ByteStream`` standing for the browser's connection: scripted reads, recorded writes."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = asyncio.Queue[bytes]()
        for data in reads:
            self.reads.put_nowait(data)
        self.written: list[bytes] = []

    async def receive(self) -> bytes:
        return await self.reads.get()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def send_all(self, data: bytes) -> None:
        self.write(data)

    def must_drain(self) -> bool:
        return False

    async def drain(self) -> None:
        return None

    async def send_eof(self) -> None:
        self.written.append(b"<eof>")

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


def test_adopting_the_browser_keeps_every_byte_in_order_both_ways() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], bool]:
        relay_end, endpoint_end = _pipe("test")
        endpoint_end.write(b"101 head")  # read by the relay's parser
        endpoint_end.write(b"queued-1")  # still in the pipe when the relay hands over
        endpoint_end.write(b"queued-2")
        assert await relay_end.receive() == b"101 head"
        browser = _Browser([b"from-browser-2", b""])
        going_away = asyncio.Event()
        adopted = asyncio.ensure_future(
            relay_end.adopt(
                browser, client_rest=b"from-browser-1", own_rest=b"rest-of-101",
                going_away=going_away,
            )
        )  # fmt: skip
        await _turn_ends()
        # The endpoint now reads the browser (what came behind its request first) ...
        got = [await endpoint_end.receive() for _ in range(3)]
        # ... and writes to it directly.
        await endpoint_end.send_all(b"after")
        await endpoint_end.send_eof()
        waiter = asyncio.ensure_future(endpoint_end.wait_going_away())
        going_away.set()
        await asyncio.wait_for(waiter, 1.0)
        assert not adopted.done()  # the relay waits for the endpoint's session ...
        endpoint_end.close()
        await adopted  # ... which ends it
        return got, browser.written, adopted.done()

    got, written, ended = run(scenario())
    assert got == [b"from-browser-1", b"from-browser-2", b""]
    assert written == [b"rest-of-101", b"queued-1", b"queued-2", b"after", b"<eof>"]
    assert ended
