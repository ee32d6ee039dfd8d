"""The sans-IO HTTP/1.1 core on llhttp (httptools): no sockets, no awaits.

The public face: ``Http1Connection`` (h11's API subset, either role) and its
events, errors and states; a request's ``HeaderFacts``; the checks, header
rewriting, status pages and cookie rules the relay applies; the WebSocket
frame edges the splice watches. Modules inside: ``events``, ``connection``
(with ``parser``, ``framing``), ``header_facts``, ``headers``, ``checks``,
``checked_events``, ``pages``, ``cookies``, ``frame_edges``.
"""

from hostmux.http1.checked_events import (
    request_checking_headers,
    request_of_checked_headers,
    response_checking_headers,
    response_of_checked_headers,
)
from hostmux.http1.checks import CheckedRequest, check_request, framing_refusal, parse_error_status
from hostmux.http1.connection import Http1Connection
from hostmux.http1.cookies import host_only_cookies, without_cookie_domain
from hostmux.http1.events import (
    CONNECTION_CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    LocalProtocolError,
    Pending,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
    Role,
    State,
    checked_headers,
)
from hostmux.http1.frame_edges import FrameEdges, close_frame
from hostmux.http1.header_facts import HeaderFacts, facts_of, header_facts
from hostmux.http1.headers import (
    ClientInfo,
    TrustedProxies,
    drop_hop_by_hop,
    is_websocket_upgrade,
    request_headers_for_app,
    response_headers_for_client,
)
from hostmux.http1.pages import (
    Page,
    redirect_page,
    router_home_page,
    status_page,
    wants_html,
    with_headers,
)

__all__ = [
    "CONNECTION_CLOSED",
    "END_OF_MESSAGE",
    "NEED_DATA",
    "PAUSED",
    "CheckedRequest",
    "ClientInfo",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "FrameEdges",
    "HeaderFacts",
    "Headers",
    "Http1Connection",
    "InformationalResponse",
    "LocalProtocolError",
    "Page",
    "Pending",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "Role",
    "State",
    "TrustedProxies",
    "check_request",
    "checked_headers",
    "close_frame",
    "drop_hop_by_hop",
    "facts_of",
    "framing_refusal",
    "header_facts",
    "host_only_cookies",
    "is_websocket_upgrade",
    "parse_error_status",
    "redirect_page",
    "request_checking_headers",
    "request_headers_for_app",
    "request_of_checked_headers",
    "response_checking_headers",
    "response_headers_for_client",
    "response_of_checked_headers",
    "router_home_page",
    "status_page",
    "wants_html",
    "with_headers",
    "without_cookie_domain",
]
