"""TLS-ALPN-01 (RFC 8737): the challenge answered on the HTTPS port, chosen by the hello.

The CA connects to DOMAIN:443 offering only the ALPN protocol ``acme-tls/1``
and expects a self-signed certificate for DOMAIN carrying the critical
``acmeIdentifier`` extension (the SHA-256 of the key authorization). Python's
ssl shows a server the ALPN list only after it chose a certificate, so with
``acme_challenge = "tls-alpn-01"`` the HTTPS listener peeks at each
ClientHello first (``router.tls_front``, which leaves it in the socket): a
hello offering ``acme-tls/1`` for a name with a pending challenge gets the
challenge certificate and is closed after the handshake; every other
connection gets the front door as usual, its hello untouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("hostmux.acme")

ACME_TLS_PROTOCOL = "acme-tls/1"
# RFC 8737 section 3: id-pe-acmeIdentifier.
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# Reason: a capacity error (EMFILE) repeats at once; pause before accepting again.
_CAPACITY_PAUSE_S = 0.1
_CHALLENGE_VALIDITY = timedelta(days=7)


class TlsAlpnChallenges:
    """The challenge contexts by host name, while an order is pending (one per name)."""

    def __init__(self, hosts: frozenset[str], scratch: Path) -> None:
        self.hosts = hosts
        self._scratch = scratch  # private (0700): the key touches disk only to be loaded
        self._contexts: dict[str, ssl.SSLContext] = {}

    def __repr__(self) -> str:
        return f"<TlsAlpnChallenges pending={len(self._contexts)}>"

    def add(self, host: str, key_authorization: str) -> None:
        self._contexts[host] = _challenge_context(host, key_authorization, self._scratch)

    def remove(self, host: str) -> None:
        self._contexts.pop(host, None)

    def context_for(self, sni: str | None, alpn: tuple[bytes, ...]) -> ssl.SSLContext | None:
        if sni is None or ACME_TLS_PROTOCOL.encode() not in alpn:
            return None
        return self._contexts.get(sni)


def _challenge_context(host: str, key_authorization: str, scratch: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _CHALLENGE_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        # The extension's value is the DER OCTET STRING of the digest (RFC 8737 3).
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_PROTOCOL])
    fd, path = tempfile.mkstemp(dir=scratch, suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    return context
