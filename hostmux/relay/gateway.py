"""What the relay asks of whoever owns it: where each request goes.

The router answers by Host (a tunnel), the auth helper by session (the app or
a login page); both hand the relay a ``Destination`` or a ``Page``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from hostmux.http1.events import Request
from hostmux.http1.headers import ClientInfo, Headers
from hostmux.http1.pages import Page
from hostmux.relay.streams import ByteStream


class UpstreamUnavailable(Exception):
    """The upstream could not be opened; the message is safe to show the user.

    ``headers`` go on the page (e.g. ``X-Hostmux-Error`` from the router link);
    ``status`` is its status: 502, or 403 when the router holding the name refused the
    browser's client certificate (``router.cluster.wire``).
    """

    def __init__(
        self, message: str, headers: Sequence[tuple[bytes, bytes]] = (), *, status: int = 502
    ) -> None:
        super().__init__(message)
        self.headers = list(headers)
        self.status = status


@dataclass(slots=True, init=False)
class Destination:
    """Where a routed request goes (made per request: not frozen, whose ``__init__``
    costs 3x as much; never changed once made; its ``__init__`` written out, so that
    the compiled core compiles it)."""

    key: str  # requests with the same key may share one upstream stream
    label: str  # for logs: the tunnel name
    open: Callable[[], Awaitable[ByteStream]]  # raises UpstreamUnavailable
    # The app's request headers from the browser's and "is it a WebSocket
    # upgrade"; None: the router's rules (``hostmux.http1.request_headers_for_app``).
    request_headers: Callable[[Sequence[tuple[bytes, bytes]], bool], Headers] | None = None
    # True when ``request_headers`` only keeps parsed values and adds valid ones
    # (what it returns needs no second header check); False: its output is checked.
    request_headers_checked: bool = False
    # Applied to the app's response headers after the router's own rules.
    response_headers: Callable[[Headers], Headers] | None = None
    # True when ``response_headers`` only keeps or shortens parsed values (what
    # it returns needs no second header check); False: its output is checked.
    response_headers_checked: bool = False
    # Idle upstream streams kept across browser connections (the auth helper's
    # connections to the app); None: each browser connection opens its own.
    pool: UpstreamPool | None = None
    # Who the gateway let through, for the access log (the auth helper's session
    # user; "": nobody in particular).
    user: str = ""

    def __init__(
        self,
        key: str,
        label: str,
        open: Callable[[], Awaitable[ByteStream]],
        request_headers: Callable[[Sequence[tuple[bytes, bytes]], bool], Headers] | None = None,
        request_headers_checked: bool = False,
        response_headers: Callable[[Headers], Headers] | None = None,
        response_headers_checked: bool = False,
        pool: UpstreamPool | None = None,
        user: str = "",
    ) -> None:
        self.key = key
        self.label = label
        self.open = open
        self.request_headers = request_headers
        self.request_headers_checked = request_headers_checked
        self.response_headers = response_headers
        self.response_headers_checked = response_headers_checked
        self.pool = pool
        self.user = user


class UpstreamPool(Protocol):
    """Idle upstream streams, each lent to one browser connection at a time."""

    async def take(self) -> ByteStream | None:
        """An idle stream, now this caller's alone, or None (open a fresh one)."""
        ...

    def give(self, stream: ByteStream) -> None:
        """Back from a browser connection that ended between two requests: keep or close it."""
        ...


class Gateway(Protocol):
    """Decides, per request, where it goes (router: by Host; helper: by session)."""

    def route(
        self, host: str, request: Request, request_id: str, client: ClientInfo
    ) -> Destination | Page | Awaitable[Destination | Page]:
        """Where the request goes; may be a coroutine when deciding needs I/O."""
        ...
