"""TLS contexts for the router-to-router link: both ends prove membership of one cluster.

``cluster_tls_contexts(ca_file, cert_file, key_file)`` returns a server and a
client ``ssl.SSLContext`` with the same rules on both sides:

- the peer must present a certificate (``CERT_REQUIRED`` on the server too)
  that chains to the cluster CA *only*: no system trust store is loaded, so a
  certificate from a public CA is no more a member than a self-signed one;
- the peer's certificate must be meant for its role (OpenSSL checks the EKU:
  clientAuth for the connecting router, serverAuth for the accepting one);
- TLS 1.2 at least, and X.509 strict mode, so a malformed certificate is
  refused rather than interpreted;
- the client checks the server's name: connect with ``server_hostname`` set to
  the router id you mean to reach, and a different member cannot answer for it.

The files are checked when the contexts are built (one line naming the file:
unreadable, not from this CA, no router id, expired, key not matching), so a
router with the wrong files stops at start instead of failing every handshake.

``peer_router_id(ssl_object)`` reads the router id of a verified peer from the
one DNS name in its certificate's SAN.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from ._certificates import load_certificate
from ._cluster_ca import check_router_id
from ._errors import KeyFileError, KeysError

# The link carries forwarded requests: nothing older than TLS 1.2 is acceptable.
_MINIMUM_TLS = ssl.TLSVersion.TLSv1_2

# A router certificate is both: each router accepts and opens links.
_ROUTER_EKUS = frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})


def cluster_tls_contexts(
    ca_file: Path, cert_file: Path, key_file: Path
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Return ``(server_context, client_context)`` for this router's cluster link.

    Raises ``KeyFileError`` (one line, naming the file) if the files cannot
    make a working member of the cluster.
    """
    check_router_certificate(ca_file, cert_file)
    server = _context(ssl.PROTOCOL_TLS_SERVER, ca_file, cert_file, key_file)
    server.verify_mode = ssl.CERT_REQUIRED
    client = _context(ssl.PROTOCOL_TLS_CLIENT, ca_file, cert_file, key_file)
    # PROTOCOL_TLS_CLIENT already verifies and checks names; said here so it stays so.
    client.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = True
    return server, client


def check_router_certificate(ca_file: Path, cert_file: Path) -> str:
    """Return the router id of ``cert_file`` if the cluster CA signed it for a router."""
    ca = load_certificate(ca_file)
    certificate = load_certificate(cert_file)
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as error:
        raise KeyFileError(f"{cert_file} is not signed by the cluster CA {ca_file}") from error
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        eku = set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound as error:
        raise KeyFileError(f"{cert_file} is not a router certificate: {error}") from error
    names = san.get_values_for_type(x509.DNSName)
    if len(names) != 1:
        raise KeyFileError(f"{cert_file} names {len(names)} router ids; a router has one")
    try:
        router_id = check_router_id(names[0])
    except KeysError as error:
        raise KeyFileError(f"{cert_file}: {error}") from error
    if not eku.issuperset(_ROUTER_EKUS):
        raise KeyFileError(f"{cert_file} is not for both serverAuth and clientAuth")
    if certificate.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise KeyFileError(
            f"{cert_file} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; issue a new one"
        )
    return router_id


def peer_router_id(connection: ssl.SSLSocket | ssl.SSLObject) -> str:
    """The router id in the verified peer certificate of ``connection``.

    For asyncio streams pass ``writer.get_extra_info("ssl_object")``. Raises
    ``KeysError`` if the peer sent no certificate or it names no single valid id.
    """
    certificate = connection.getpeercert()
    if not certificate:  # None before the handshake; {} when nothing was verified
        raise KeysError("the peer presented no verified certificate")
    # getpeercert()'s SAN is a tuple of (kind, value) pairs; typeshed types it loosely.
    entries = certificate.get("subjectAltName", ())
    names = [e[1] for e in entries if isinstance(e, tuple) and e[0] == "DNS"]
    if len(names) != 1:
        raise KeysError(f"the peer's certificate names {len(names)} router ids; a router has one")
    return check_router_id(names[0])


def _context(
    protocol: ssl._SSLMethod, ca_file: Path, cert_file: Path, key_file: Path
) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = _MINIMUM_TLS
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        raise KeyFileError(f"cannot load cluster CA {ca_file}: {_reason(error)}") from error
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        raise KeyFileError(f"{key_file} is not the key of {cert_file}: {_reason(error)}") from error
    except OSError as error:
        raise KeyFileError(f"cannot load {cert_file} / {key_file}: {_reason(error)}") from error
    return context


def _reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    return error.strerror or str(error)
