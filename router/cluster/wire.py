"""The router link's whole vocabulary: one request, four answers (pure).

Each forwarded stream is one HTTP/1.1 exchange on a persistent mutual-TLS
connection from the sender (the router a browser reached) to the holder (the
router whose tunnel serves the name)::

    POST /_hostmux/stream HTTP/1.1
    Host: <holder's router id>
    X-Hostmux-Name: <name>
    X-Hostmux-Owner: <owner the sender's route names>
    X-Hostmux-Generation: <the route's generation the sender saw>
    X-Hostmux-Client: <browser IP> <browser port>
    X-Hostmux-Scheme: https | http
    X-Hostmux-Client-Cert-Route: <the client certificate route that verified the
                                 browser's certificate> (only when one did)
    Transfer-Encoding: chunked

The sender is the router that terminated the browser's TLS: it verified the
client certificate (``router.client_certs``) and wrote the app's RFC 9440
``Client-Cert`` headers into the inner request (the browser's own copies, and
any ``X-Hostmux-*`` header, are dropped there). The link header tells the
holder which route verified it, so the holder applies its own route check
(``PeerServer``): a name under a route is never served through a router that
did not verify a certificate for that route. Only cluster peers (a cluster CA
certificate) reach this head; browsers never write it.

The holder answers at once, before the request body:

- ``409`` + ``X-Hostmux-Error: route-moved``, empty body: it holds no tunnel
  for the name, or one of another owner, or one claimed at a newer
  generation than the sender saw. The sender looks the name up again.
- ``502`` + ``X-Hostmux-Error: tunnel-failed``, empty body: the SSH channel
  could not be opened in time.
- ``403`` + ``X-Hostmux-Error: certificate-required``, empty body: the name is
  under one of the holder's client certificate routes, and the stream names
  no certificate verified by that route. The sender answers the browser 403.
- ``400`` + ``X-Hostmux-Error: bad-request``: not a stream request.
- ``200``, chunked: the channel is open. From here on the request body's
  chunks are the bytes for the channel and the response body's chunks the
  channel's bytes, both ways at once; a terminating chunk is a half-close,
  a closed TLS connection an abort.

After an error answer the sender ends its (empty) request body, and the
connection carries the next stream. The inner bytes are the browser's
request as the sender's relay rewrote it: the holder does not parse them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hostmux.http1 import Request, Response
from hostmux.names import check_name

STREAM_PATH = b"/_hostmux/stream"
NAME, OWNER, GENERATION = b"x-hostmux-name", b"x-hostmux-owner", b"x-hostmux-generation"
CLIENT, SCHEME, ERROR = b"x-hostmux-client", b"x-hostmux-scheme", b"x-hostmux-error"
CERT_ROUTE = b"x-hostmux-client-cert-route"
# Reason: a header that peers outside the link never see; the sender's error pages carry it.
ERROR_HEADER = b"X-Hostmux-Error"
# Reason: an owner is a key fingerprint or an instance id; bounds what a peer may send.
_MAX_FIELD = 200
# Reason: a route's key is its name patterns joined; a few dozen patterns fit.
_MAX_ROUTE_FIELD = 2048


class LinkError(enum.Enum):
    """The ``X-Hostmux-Error`` codes (the last also goes to browsers, on 502 pages)."""

    ROUTE_MOVED = "route-moved"  # 409: look the name up again
    TUNNEL_FAILED = "tunnel-failed"  # 502: the holder could not open its channel
    CERTIFICATE_REQUIRED = "certificate-required"  # 403: no certificate of the name's route
    BAD_REQUEST = "bad-request"  # 400: not a stream request
    ROUTER_UNREACHABLE = "router-unreachable"  # the sender's own: the holder did not answer


class BadStreamRequest(ValueError):
    """A link request the holder cannot act on; the message is one line."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What the holder needs to pick and check its tunnel, and to log the browser."""

    name: str
    owner: str
    generation: int
    client_ip: str
    client_port: int
    scheme: str
    # The client certificate route (``ClientCertRoute.key``) that verified the browser's
    # certificate on the sender; None: no verified certificate.
    certificate_route: str | None = None

    def request(self, holder_id: str) -> Request:
        """The link request's head (its body is the stream's bytes, chunked)."""
        headers = [
            (b"host", holder_id.encode()),
            (NAME, self.name.encode()),
            (OWNER, self.owner.encode()),
            (GENERATION, b"%d" % self.generation),
            (CLIENT, f"{self.client_ip} {self.client_port}".encode()),
            (SCHEME, self.scheme.encode()),
            (b"transfer-encoding", b"chunked"),
        ]
        if self.certificate_route is not None:
            headers.append((CERT_ROUTE, self.certificate_route.encode()))
        return Request(method=b"POST", target=STREAM_PATH, headers=headers)


def parse_stream_request(request: Request) -> StreamRequest:
    """The stream request in ``request``; BadStreamRequest (one line) if it is not one."""
    if request.method != b"POST" or request.target != STREAM_PATH:
        raise BadStreamRequest(f"not a stream request: {request.method!r} {request.target!r}")
    values: dict[bytes, str] = {}
    for name, value in request.headers:
        if name in (NAME, OWNER, GENERATION, CLIENT, SCHEME, CERT_ROUTE):
            limit = _MAX_ROUTE_FIELD if name == CERT_ROUTE else _MAX_FIELD
            if name in values or len(value) > limit:
                raise BadStreamRequest(f"{name.decode()}: repeated or too long")
            values[name] = value.decode("ascii", "replace")
    missing = [n.decode() for n in (NAME, OWNER, GENERATION, CLIENT, SCHEME) if n not in values]
    if missing:
        raise BadStreamRequest(f"missing {', '.join(missing)}")
    try:
        checked = _check_stream_name(values[NAME])
    except ValueError as error:
        raise BadStreamRequest(f"x-hostmux-name: {error}") from None
    ip, _, port = values[CLIENT].partition(" ")
    generation = values[GENERATION]
    if not generation.isdigit() or not port.isdigit() or not ip:
        raise BadStreamRequest("x-hostmux-generation or x-hostmux-client is malformed")
    scheme = values[SCHEME]
    if scheme not in ("http", "https"):
        raise BadStreamRequest(f"x-hostmux-scheme: {scheme!r} is not http or https")
    return StreamRequest(
        checked, values[OWNER], int(generation), ip, int(port), scheme, values.get(CERT_ROUTE)
    )


def _check_stream_name(name: str) -> str:
    """A tunnel name, or a TCP tunnel's "tcp:PORT" (``router.tcp_ports``)."""
    port = name.removeprefix("tcp:")
    if port != name:
        if not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)):
            raise ValueError(f"{name!r} is not tcp:PORT")
        return name
    return check_name(name)


def error_answer(error: LinkError) -> Response:
    """An answer that ends the exchange at once (empty body)."""
    status = {
        LinkError.ROUTE_MOVED: 409, LinkError.TUNNEL_FAILED: 502,
        LinkError.CERTIFICATE_REQUIRED: 403,
    }.get(error, 400)  # fmt: skip
    return Response(
        status_code=status,
        headers=[(b"content-length", b"0"), (ERROR, error.value.encode())],
        reason=error.value.encode(),
    )


# The channel is open: the stream's bytes follow, chunked.
OPEN_ANSWER = Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")], reason=b"OK")


def error_of(response: Response) -> LinkError | None:
    """The error an answer carries (None for 200; BAD_REQUEST for anything unexpected)."""
    if response.status_code == 200:
        return None
    for name, value in response.headers:
        if name == ERROR:
            try:
                return LinkError(value.decode("ascii", "replace"))
            except ValueError:
                break
    return LinkError.BAD_REQUEST
