"""How a relayed request ends early: the relay's own exceptions (caught in ``relay``).

Exceptions::

    Refusal          answer with a status page (nothing of the app's response was sent)
    Abort            end the browser connection without a word (a response is under way)
    StaleUpstream    a reused upstream closed before answering: try a fresh one
"""

from __future__ import annotations


class Refusal(Exception):
    """The request gets a status page instead of the app's answer; the connection then closes.

    Raised wherever the relay decides so (checks, routing, the upstream, the
    body, the response) and caught once, in ``HttpRelay``.
    """

    def __init__(
        self, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail  # shown to the user on the status page
        self.headers = headers or []  # added to the status page (checked names and values)


class Abort(Exception):
    """Ends the browser connection without a response (it cannot get one now)."""


class StaleUpstream(Exception):
    """A reused upstream stream was closed by the app before it answered."""
