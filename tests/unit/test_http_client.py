"""``hostmux.http_client.read_bounded``: the one bounded read of a portal's answer."""

from __future__ import annotations

import httpx
import pytest

from hostmux.http_client import HTTP_CALL_FAILURES, AnswerTooLarge, read_bounded

from .asyncio_bounded import run


def _response(body: bytes) -> httpx.Response:
    async def chunks() -> object:
        for start in range(0, len(body), 3):  # several reads, as a network answer comes
            yield body[start : start + 3]

    return httpx.Response(200, content=chunks())  # type: ignore[arg-type]


def test_an_answer_up_to_the_limit_is_read_whole() -> None:
    assert run(read_bounded(_response(b"0123456789"), 10)) == b"0123456789"


def test_an_answer_past_the_limit_is_refused_as_an_http_failure() -> None:
    with pytest.raises(AnswerTooLarge, match="the answer is too large") as refused:
        run(read_bounded(_response(b"0123456789A"), 10))
    assert isinstance(refused.value, HTTP_CALL_FAILURES)  # callers that catch those see it too
