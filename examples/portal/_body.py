"""Reading a request body with a bound (a sender cannot make the portal buffer more)."""

from __future__ import annotations

import contextlib

from starlette.requests import Request


async def body_at_most(request: Request, limit: int) -> bytes | None:
    """The request body, or None if it is longer than ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async with contextlib.aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                return None
    return bytes(body)
