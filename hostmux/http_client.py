"""What an outgoing HTTP call (httpx) can fail with, and how to say so in one line.

httpx promises ``httpx.HTTPError`` for network failures, but under uvloop (which
the router, listener and auth helper use when installed) a peer that accepts a
connection and resets it at once surfaces as ``AttributeError`` from anyio: by
the time anyio asks the new transport for its peer name, uvloop has dropped the
socket (MagicStack/uvloop#560). Measured against a loopback server that resets
every connection: 136 of 200 calls raised it. A portal that is restarting does
exactly that, so every call to a portal catches ``HTTP_CALL_FAILURES`` and
reports ``describe(exc)`` instead of crashing on it.
"""

from __future__ import annotations

import httpx

from hostmux.log import describe  # one describe for every failure; here for the call sites

__all__ = ["HTTP_CALL_FAILURES", "AnswerTooLarge", "describe", "read_bounded"]

HTTP_CALL_FAILURES: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    OSError,
    TimeoutError,
    AttributeError,  # uvloop + anyio on a reset connection (see above)
)


class AnswerTooLarge(httpx.DecodingError):
    """The answer's body is over the caller's limit (an ``httpx.HTTPError`` like the others)."""


async def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """A streamed response's body; ``AnswerTooLarge`` as soon as it passes ``limit`` bytes."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise AnswerTooLarge("the answer is too large")
    return body
