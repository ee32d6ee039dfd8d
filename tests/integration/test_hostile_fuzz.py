"""Fuzzing the real router process over real sockets (tests/unit/test_relay.py fuzzes in memory).

Hypothesis drives blocking sockets from a worker thread while trio keeps the
recording app (the tunnel's far end) running. Each example is one connection:
random and mutated-valid request bytes, then a half-close; the router must
answer with HTTP/1.1 or close within the deadline, never hang. After the run
it must still serve, hold no more descriptors than before, and have logged no
traceback. Derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import socket

import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.test_relay import client_bytes

from .conftest import Stack, public_key_of
from .raw_http import (
    EXCHANGE_DEADLINE_S,
    RecordingApp,
    assert_no_traceback,
    exchange,
    open_fds,
    parse_responses,
)

NAME = "myapp"  # the host client_bytes mostly asks for
VALID = (
    b"POST /upload?x=1 HTTP/1.1\r\nHost: myapp.localhost\r\nAccept: */*\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    b"GET / HTTP/1.1\r\nHost: myapp.localhost\r\n\r\n"
)


def _mutate(start: int, cut: int, insert: bytes) -> bytes:
    return VALID[:start] + insert + VALID[start + cut :]


mutated_valid = st.builds(
    _mutate,
    st.integers(min_value=0, max_value=len(VALID)),
    st.integers(min_value=0, max_value=8),
    st.binary(max_size=8) | st.sampled_from([b"\r\n", b"\n", b" ", b"\x00", b":", b"\r\n\r\n"]),
)
fuzz_input = st.one_of(mutated_valid, client_bytes, st.binary(max_size=200))


def _one_connection(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, read until the router closes (blocking, with a deadline)."""
    with socket.create_connection(("127.0.0.1", port), timeout=EXCHANGE_DEADLINE_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the router may close first: it had seen enough
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread: still a close
        except TimeoutError:
            raise AssertionError(f"no answer and no close for {data!r}") from None
        return answer


def _fuzz(port: int) -> int:
    """Runs the examples against ``port``; returns how many got a response."""
    answered = 0

    @settings(
        max_examples=150, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )  # fmt: skip
    @given(data=fuzz_input)
    @example(data=VALID)  # one good pair of requests in every run, whatever else is drawn
    def check(data: bytes) -> None:
        nonlocal answered
        answer = _one_connection(port, data)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 "), (data, answer[:100])
        answered += answer != b""
        if data == VALID:  # the tunnel works in this very run: both requests answered
            assert [r.status for r in parse_responses(answer)] == [200, 200]

    check()
    return answered


async def test_fuzzed_bytes_get_an_answer_or_a_close_and_leak_nothing(stack: Stack) -> None:
    router = await stack.start_router()
    key = stack.new_key("fuzz")
    router.authorize(public_key_of(key))
    app = await RecordingApp().start(stack.nursery)
    await stack.openssh_tunnel(router, key, NAME, app.port)
    good = b"GET /good HTTP/1.1\r\nHost: myapp.localhost\r\nConnection: close\r\n\r\n"
    assert [r.status for r in parse_responses(await exchange(router, good))] == [200]
    pid = router.proc.process.pid
    fds_before = open_fds(pid)

    with trio.fail_after(300):  # ~150 connections; minutes only if something hangs
        answered = await trio.to_thread.run_sync(_fuzz, router.http_port)

    print(f"fuzz: {answered} of 150 answered, fds {fds_before} -> {open_fds(pid)}")
    assert answered > 50  # most examples got a response, so they exercised the relay
    assert [r.status for r in parse_responses(await exchange(router, good))] == [200]
    # Every fuzz connection was read to its EOF, i.e. until the router closed
    # its socket: the router's descriptors are back where they were.
    assert open_fds(pid) <= fds_before
    assert any(c.startswith(b"POST /upload?x=1 ") for c in app.connections)  # the @example
    assert_no_traceback(router.proc)
