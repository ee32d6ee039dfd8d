"""Client certificates at the front door (mutual TLS), per name pattern: ``[[client_cert_routes]]``.

Rules:

1. A route is a TOML table: ``names`` (a glob on the tunnel's name, e.g.
   ``"lab-*"``, or a list of them), ``ca_file`` (PEM CAs that sign the
   clients' certificates), optional ``crl_file`` (a PEM CRL: a revoked leaf
   is refused) and ``required_at_handshake`` (default false). The first route
   whose pattern matches a name is its route.
2. Python's ssl cannot change verification inside its SNI callback (the new
   context's certificate store is used, the old one's verify mode: nothing
   verifies), so the HTTPS listener peeks at the ClientHello
   (``router.tls_front``) and hands the handshake a context made for the SNI's
   route *and* the certificate that name is served with: ``CERT_OPTIONAL``,
   or ``CERT_REQUIRED`` with ``required_at_handshake`` (no certificate: a TLS
   alert). A name under no route is never asked for a certificate.
3. A certificate that does not verify (another CA, expired, revoked) fails the
   handshake with a TLS alert either way: Python's ssl has no verify callback
   that would let the handshake finish so that a page could say why.
4. Per request (``TunnelGateway``): a name under a route is served only over a
   connection whose certificate was verified by *that* route; otherwise a 403
   page. So a connection made for another name (SNI) cannot reach it by its
   Host header, with or without a certificate.
5. The app gets RFC 9440 ``Client-Cert`` (the leaf, DER, as a structured-field
   byte sequence) and ``Client-Cert-Chain`` (the CAs above it, as verified,
   when the Python in use can say: 3.10+ has ``get_verified_chain``), plus
   ``X-Client-Cert-Subject`` (RFC 4514, non-ASCII escaped as ``\\XX``) and
   ``X-Client-Cert-Fingerprint`` (SHA-256 of the DER, lower-case hex).
   Client-sent copies are dropped in every spelling
   (``hostmux.http1.header_facts.CLIENT_CERT``).
6. The CA and CRL files are read when the router starts and again on SIGHUP
   (``reload``): all or nothing, a bad file keeps the old routes.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import logging
import ssl
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from hostmux.config.layered import ConfigError
from hostmux.http1.headers import ClientCertificate
from hostmux.log import fields
from router.tls import certificate_files

log = logging.getLogger("hostmux.tls")

_ROUTE_KEYS = frozenset({"names", "ca_file", "crl_file", "required_at_handshake"})


@dataclass(frozen=True)
class ClientCertRoute:
    """One ``[[client_cert_routes]]`` table, as written."""

    names: tuple[str, ...]  # globs on the tunnel's name
    ca_file: Path
    crl_file: Path | None = None
    required_at_handshake: bool = False

    @property
    def key(self) -> str:
        """What names the route in a verified certificate (``ClientCertificate.verified_by``)."""
        return ",".join(self.names)

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names)


def parse_client_cert_routes(tables: Sequence[dict[str, Any]]) -> list[ClientCertRoute]:
    """The ``[[client_cert_routes]]`` tables; ValueError naming the table and what is wrong."""
    routes = []
    for number, table in enumerate(tables, 1):
        where = f"client_cert_routes #{number}"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: a table ([[client_cert_routes]]) is expected")
        unknown = set(table) - _ROUTE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys: {', '.join(sorted(unknown))}")
        for needed in ("names", "ca_file"):
            if needed not in table:
                raise ValueError(f"{where}: needs {needed}")
        names = table["names"]
        if isinstance(names, str):
            names = [names]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            raise ValueError(f'{where}: names is a glob or a list of globs, e.g. "lab-*"')
        ca_file, crl_file = table["ca_file"], table.get("crl_file")
        if not isinstance(ca_file, str) or not ca_file:
            raise ValueError(f"{where}: ca_file is a path")
        if crl_file is not None and (not isinstance(crl_file, str) or not crl_file):
            raise ValueError(f"{where}: crl_file is a path")
        required = table.get("required_at_handshake", False)
        if not isinstance(required, bool):
            raise ValueError(f"{where}: required_at_handshake is true or false")
        routes.append(
            ClientCertRoute(
                names=tuple(n.strip().lower() for n in names),
                ca_file=Path(ca_file).expanduser(),
                crl_file=Path(crl_file).expanduser() if crl_file else None,
                required_at_handshake=required,
            )
        )
    return routes


def check_route_files(routes: Sequence[ClientCertRoute]) -> None:
    """Each route's CA (and CRL) file loads; a ConfigError names the first that does not."""
    for route in routes:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_verify_locations(cafile=route.ca_file)
        except ssl.SSLError:  # (an OSError too: first)
            raise ConfigError(
                f"client_cert_routes ca_file {route.ca_file}: no PEM certificate in it"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"client_cert_routes ca_file {route.ca_file}: {exc.strerror or exc}"
            ) from None
        if not context.get_ca_certs():
            raise ConfigError(f"client_cert_routes ca_file {route.ca_file}: no CA certificate")
        if route.crl_file is not None:
            try:
                x509.load_pem_x509_crl(route.crl_file.read_bytes())
            except OSError as exc:
                raise ConfigError(
                    f"client_cert_routes crl_file {route.crl_file}: {exc.strerror or exc}"
                ) from None
            except ValueError:
                raise ConfigError(
                    f"client_cert_routes crl_file {route.crl_file}: not a PEM CRL"
                ) from None


class ClientCertRoutes:
    """The routes and the contexts made for them: one per (route, served certificate)."""

    def __init__(self, routes: Sequence[ClientCertRoute]) -> None:
        check_route_files(routes)
        self._routes = tuple(routes)
        # Per served-certificate context (weakly: the dev CA's cache drops them), the
        # contexts made from it per route key.
        self._made: weakref.WeakKeyDictionary[ssl.SSLContext, dict[str, ssl.SSLContext]] = (
            weakref.WeakKeyDictionary()
        )
        self._route_of: weakref.WeakKeyDictionary[ssl.SSLContext, ClientCertRoute] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"<ClientCertRoutes routes={len(self._routes)}>"

    def __bool__(self) -> bool:
        return bool(self._routes)

    @property
    def routes(self) -> tuple[ClientCertRoute, ...]:
        return self._routes

    def replace(self, routes: Sequence[ClientCertRoute]) -> None:
        """New handshakes use ``routes`` (files read again); a ConfigError keeps the old."""
        check_route_files(routes)
        self._routes = tuple(routes)
        self._made = weakref.WeakKeyDictionary()

    def route_for(self, name: str) -> ClientCertRoute | None:
        for route in self._routes:
            if route.matches(name):
                return route
        return None

    def context_for(self, route: ClientCertRoute, served: ssl.SSLContext) -> ssl.SSLContext:
        """A context serving ``served``'s certificate that asks for (or requires) a client
        certificate signed by ``route``'s CA; made on first use and kept."""
        made = self._made.setdefault(served, {})
        context = made.get(route.key)
        if context is None:
            context = _route_context(route, served)
            made[route.key] = context
            self._route_of[context] = route
        return context

    def certificate_of(self, ssl_object: Any) -> ClientCertificate | None:
        """The verified client certificate of a connection made with one of our contexts."""
        route = self._route_of.get(ssl_object.context)
        if route is None:
            return None
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            return None
        return ClientCertificate(
            verified_by=route.key, headers=certificate_headers(der, ssl_object)
        )


def _route_context(route: ClientCertRoute, served: ssl.SSLContext) -> ssl.SSLContext:
    files = certificate_files(served)
    if files is None:
        raise ConfigError("a client certificate route needs the served certificate's files")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(*files)
    context.set_alpn_protocols(["http/1.1"])
    context.load_verify_locations(cafile=route.ca_file)
    if route.crl_file is not None:
        context.load_verify_locations(cafile=route.crl_file)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    context.verify_mode = ssl.CERT_REQUIRED if route.required_at_handshake else ssl.CERT_OPTIONAL
    log.debug(fields("client_cert_context", names=route.key, ca=str(route.ca_file)))
    return context


def certificate_headers(der: bytes, ssl_object: Any = None) -> tuple[tuple[bytes, bytes], ...]:
    """RFC 9440 ``Client-Cert`` (and ``Client-Cert-Chain`` when the verified chain is
    known), ``X-Client-Cert-Subject`` and ``X-Client-Cert-Fingerprint``."""
    certificate = x509.load_der_x509_certificate(der)
    headers = [(b"client-cert", b":" + base64.b64encode(der) + b":")]
    chain = _verified_chain(ssl_object) if ssl_object is not None else []
    above = chain[1:]  # the leaf is Client-Cert; RFC 9440 2.2: the rest
    if above:
        headers.append(
            (b"client-cert-chain", b", ".join(b":" + base64.b64encode(c) + b":" for c in above))
        )
    headers.append((b"x-client-cert-subject", _ascii_dn(certificate.subject.rfc4514_string())))
    headers.append((b"x-client-cert-fingerprint", hashlib.sha256(der).hexdigest().encode()))
    return tuple(headers)


def _verified_chain(ssl_object: Any) -> list[bytes]:
    """The verified chain's certificates (DER, leaf first), where Python tells: public
    from 3.13, on the C object before (3.10-3.12); else none."""
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        return []
    try:
        found = getter() or []
        return [
            c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
            for c in found
        ]
    except (ssl.SSLError, ValueError, AttributeError):
        return []


def _ascii_dn(text: str) -> bytes:
    """An RFC 4514 string as a header value: non-ASCII and control characters as ``\\XX``
    (RFC 4514 2.4's escape of each UTF-8 byte)."""
    out = bytearray()
    for char in text:
        if " " <= char <= "~":
            out += char.encode()
        else:
            out += b"".join(b"\\%02X" % byte for byte in char.encode("utf-8"))
    return bytes(out)
