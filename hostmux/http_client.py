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

__all__ = ["HTTP_CALL_FAILURES", "describe"]

HTTP_CALL_FAILURES: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    OSError,
    TimeoutError,
    AttributeError,  # uvloop + anyio on a reset connection (see above)
)
