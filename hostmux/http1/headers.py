"""Header rewriting between the browser and the app (pure).

Rules:

1. Hop-by-hop headers (RFC 9110 7.6.1), and every header named in
   ``Connection``, are removed in both directions: they describe one hop.
2. Framing (``Content-Length`` / ``Transfer-Encoding: chunked``) is kept as the
   parser validated it; ``Http1Connection`` re-frames each side on its own.
3. Forwarding, client-certificate (RFC 9440 ``Client-Cert`` and the rest) and
   identity headers are set by the router (identity: by the auth helper)
   only. Client-sent copies are removed in every spelling that some server
   normalises into the same name (case, ``_`` for ``-``), so an app can trust
   them.
4. A WebSocket upgrade keeps exactly ``Connection: upgrade`` and
   ``Upgrade: websocket``; other upgrades (h2c, TLS) are not passed on.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from hostmux.http1.header_facts import (
    HOP_ANY,
    HOP_BY_HOP,
    HOP_CONNECTION,
    HOP_NONE,
    HOSTMUX_PREFIX,
    NOT_FROM_BROWSERS,
    HeaderFacts,
    connection_tokens,
    header_facts,
)

Headers = list[tuple[bytes, bytes]]

# Names some servers read for framing or routing once "_" is folded into "-":
# a client must not smuggle them past the parser in that spelling.
_FOLDED_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})

# Framing and routing: a client naming them in Connection must not make them vanish.
_NEVER_CONNECTION_SCOPED: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})

_NONE: Final[frozenset[bytes]] = frozenset()


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate the front door verified (``router.client_certs``)."""

    verified_by: str  # the route (its name patterns) whose CA verified it
    headers: tuple[tuple[bytes, bytes], ...]  # what the app gets: Client-Cert and the rest


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the router knows about the browser side of a request."""

    peer_ip: str
    peer_port: int  # 0 when the browser is behind a trusted proxy
    scheme: str  # "https" or "http"
    certificate: ClientCertificate | None = None  # a verified client certificate (mTLS)


class TrustedProxies:
    """Proxies in front of the router (nginx, a load balancer) whose word is believed.

    Only for a peer in these networks are ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` read: the client is the right-most address that is
    not itself a trusted proxy (nginx's ``real_ip_recursive on``), so entries a
    browser wrote further left are ignored. Anything unparsable stops the walk.
    """

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __repr__(self) -> str:
        return f"<TrustedProxies {', '.join(map(str, self._networks))}>"

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def client_of(self, headers: Sequence[tuple[bytes, bytes]], peer: ClientInfo) -> ClientInfo:
        """The browser behind ``peer``, if ``peer`` is a trusted proxy; else ``peer``."""
        if not self.trusts(peer.peer_ip):
            return peer
        hops: list[str] = []
        scheme = peer.scheme
        for name, value in headers:
            if name == b"x-forwarded-for":
                hops += (hop.strip() for hop in value.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto" and value.lower() in (b"http", b"https"):
                scheme = value.lower().decode()
        ip = peer.peer_ip
        for hop in reversed(hops):
            try:
                ip = str(ipaddress.ip_address(hop))
            except ValueError:
                break
            if not self.trusts(ip):
                break
        if ip == peer.peer_ip:
            return ClientInfo(peer.peer_ip, peer.peer_port, scheme, peer.certificate)
        return ClientInfo(ip, 0, scheme, peer.certificate)


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(connection_tokens(value))
    return tokens


def drop_hop_by_hop(headers: Sequence[tuple[bytes, bytes]], also: frozenset[bytes]) -> Headers:
    """``headers`` without hop-by-hop ones and without ``also`` (in any ``_`` spelling)."""
    return _drop(headers, also)


def _drop(
    headers: Sequence[tuple[bytes, bytes]],
    extra: frozenset[bytes],
    named: set[bytes] | frozenset[bytes] | None = None,
) -> Headers:
    """``headers`` less hop-by-hop ones, ``extra`` and those ``named`` in Connection
    (found here when None)."""
    if not isinstance(headers, list):
        headers = list(headers)  # a lazy sequence is iterated once, not twice
    if named is None:
        named = _connection_tokens(headers)
    kept: Headers = []
    prefixed = extra is NOT_FROM_BROWSERS
    for name, value in headers:
        # Most names need no folding and name nothing to drop: one pass of set look-ups.
        if (
            b"_" not in name
            and name not in HOP_BY_HOP
            and name not in named
            and name not in extra
            and not (prefixed and name.startswith(HOSTMUX_PREFIX))
        ):
            kept.append((name, value))
            continue
        folded = name.replace(b"_", b"-")
        if (
            name in HOP_BY_HOP
            or folded in HOP_BY_HOP
            or (name in named and name not in _NEVER_CONNECTION_SCOPED)
            or folded in extra
            or (folded != name and folded in _FOLDED_FRAMING)
            or (extra is NOT_FROM_BROWSERS and folded.startswith(HOSTMUX_PREFIX))
        ):
            continue
        kept.append((name, value))
    return kept


def is_websocket_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True if the request asks for a WebSocket upgrade (and nothing else).

    A parsed request has the answer already: ``request.facts.websocket_upgrade``.
    """
    return header_facts(headers).websocket_upgrade


# Browsers come back from the same few addresses: parsing each one once is enough.
@functools.lru_cache(maxsize=1024)
def _forwarded_for(ip: str) -> str:
    try:
        if ipaddress.ip_address(ip).version == 6:
            return f'"[{ip}]"'
    except ValueError:
        return '"unknown"'
    return ip


def request_headers_for_app(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    host: bytes,
    client: ClientInfo,
    request_id: str,
    websocket: bool,
    facts: HeaderFacts | None = None,
    forwarding: Headers | None = None,
) -> Headers:
    """The headers the app receives for a browser's request.

    ``facts`` (the request's, from the parser) spare a walk over ``headers``:
    without a header the filter may remove, they are passed on as they are.
    ``forwarding``: ``forwarding_headers(host, client)``, if the caller kept them.
    """
    if facts is None:
        out = _drop(headers, NOT_FROM_BROWSERS)
    elif facts.droppable:
        out = _drop(headers, NOT_FROM_BROWSERS, facts.connection)
    else:
        out = list(headers)
    if websocket:
        out += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    out += forwarding if forwarding is not None else forwarding_headers(host, client)
    out.append((b"x-request-id", request_id.encode()))
    return out


def forwarding_headers(host: bytes, client: ClientInfo) -> Headers:
    """``X-Forwarded-For/-Proto/-Host`` and ``Forwarded`` for a request from ``client``
    to ``host`` (the same for every request of a connection: the relay keeps them)."""
    quoted_host = host.decode("latin-1").replace('"', "")
    headers = [
        (b"x-forwarded-for", client.peer_ip.encode()),
        (b"x-forwarded-proto", client.scheme.encode()),
        (b"x-forwarded-host", host),
        (
            b"forwarded",
            f'for={_forwarded_for(client.peer_ip)};proto={client.scheme};host="{quoted_host}"'.encode(),
        ),
    ]
    if client.certificate is not None:
        headers += client.certificate.headers
    return headers


def response_headers_for_client(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    websocket_accepted: bool = False,
    hop_by_hop: int = HOP_ANY,
) -> Headers:
    """The headers the browser receives for the app's response.

    ``hop_by_hop``: what the parser saw of them (``Response.hop_by_hop``): with
    nothing to remove, or only plain ``Connection`` headers, the filter is a copy.
    """
    if hop_by_hop == HOP_NONE:
        out = list(headers)
    elif hop_by_hop == HOP_CONNECTION:
        out = [header for header in headers if header[0] != b"connection"]
    else:
        out = _drop(headers, _NONE)
    if websocket_accepted:
        out += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    return out
