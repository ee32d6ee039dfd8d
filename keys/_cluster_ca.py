"""The cluster CA: one certificate authority per cluster, and a certificate per router.

Routers of one cluster talk to each other over mutually authenticated TLS
(see ``_cluster_tls``). Trust is the cluster CA: a peer is a member exactly
when its certificate was signed by it, and its router id is the one DNS name
in that certificate's SAN.

``ClusterCA.init(directory)`` writes ``ca.crt`` and ``ca.key`` (``0600``):
an EC P-256 CA, ``pathlen 0`` (it signs routers, never another CA), key usage
keyCertSign/cRLSign, valid ten years. It refuses to replace an existing CA
unless forced, because a new CA orphans every router certificate the old one
signed. ``ClusterCA.load(directory).issue(router_id)`` writes
``<router_id>.crt`` and ``<router_id>.key``: SAN ``DNS:<router_id>``, EKU
serverAuth *and* clientAuth (each router is both server and client on the
link), valid one year by default. A router certificate is derived material and
is replaced when issued again (that is how one renews it).

Why EC P-256 and not Ed25519: both work with Python's ``ssl`` on OpenSSL 3,
but P-256 is accepted for TLS 1.2 and 1.3 client authentication by every TLS
stack and OpenSSL build an operator may debug with or put in between (FIPS
builds among them), and it is what the dev CA uses, so one loader serves both.

Router ids are checked before they name a file or a certificate
(``check_router_id``): dot-separated lower-case DNS labels, so ``ROUTER_ID.N``
for workers fits, and no IP address, since the id is matched as a host name.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ._certificates import BACKDATE, create_ca, leaf_builder, load_ca, write_leaf
from ._errors import KeyFileError, KeysError

# The file names `cluster-ca init DIR` writes, as the issue and the docs name them.
CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"

# A year: long enough not to be a chore, short enough that a lost key expires.
ROUTER_CERT_VALIDITY = datetime.timedelta(days=365)

# Shown by `openssl x509 -text`; the random tail tells two clusters' CAs apart.
_CA_NAME_PREFIX = "hostmux cluster CA"
_CA_NAME_TAIL_BYTES = 4

# The longest DNS name (RFC 1035), so any router id fits a SAN and a file name.
_MAX_ROUTER_ID = 253
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # RFC 1123; used with fullmatch


def check_router_id(router_id: str) -> str:
    """Return ``router_id`` if it may name a router's certificate, else raise ``KeysError``.

    Not normalised: ids are compared exactly, so ``Router-A`` is refused
    rather than silently becoming ``router-a``.
    """
    labels = router_id.split(".")
    valid = len(router_id) <= _MAX_ROUTER_ID and all(_LABEL.fullmatch(label) for label in labels)
    if not valid:
        raise KeysError(
            f"router id {router_id!r} is not valid: use lower-case DNS labels (a-z, 0-9, '-')"
            f" joined by dots, at most {_MAX_ROUTER_ID} characters, e.g. router-a or router-a.1"
        )
    try:
        ipaddress.ip_address(router_id)
    except ValueError:
        return router_id
    raise KeysError(f"router id {router_id!r} is an IP address; use a name such as router-a")


@dataclass(frozen=True)
class RouterCertFiles:
    """A router's certificate and key, as ``ClusterCA.issue`` wrote them."""

    router_id: str
    cert: Path
    key: Path
    not_after: datetime.datetime


class ClusterCA:
    """A cluster's CA, loaded from its directory; signs router certificates."""

    def __init__(
        self, directory: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.directory = directory
        self.certificate = certificate
        self._key = key

    def __repr__(self) -> str:
        subject = self.certificate.subject.rfc4514_string()
        return f"<ClusterCA {subject!r} in {self.directory}>"

    @property
    def ca_file(self) -> Path:
        """The certificate every router trusts (``cluster_ca_file``)."""
        return self.directory / CA_CERT_NAME

    @classmethod
    def init(cls, directory: Path, *, force: bool = False) -> ClusterCA:
        """Create a new CA in ``directory``; an existing one is replaced only if ``force``."""
        cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
        name = f"{_CA_NAME_PREFIX} {secrets.token_hex(_CA_NAME_TAIL_BYTES)}"
        existing = next((p for p in (key_path, cert_path) if p.exists()), None)
        if (existing and not force) or not create_ca(cert_path, key_path, name, replace=force):
            raise KeyFileError(
                f"{existing or key_path} already exists; not replaced (--force replaces the"
                " cluster CA; every router certificate must then be issued again)"
            )
        return cls.load(directory)

    @classmethod
    def load(cls, directory: Path) -> ClusterCA:
        """Load the CA in ``directory``; ``KeyFileError`` names what is missing or wrong."""
        if not directory.is_dir():
            raise KeyFileError(
                f"no cluster CA directory {directory} (hostmux-keys cluster-ca init creates one)"
            )
        certificate, key = load_ca(directory / CA_CERT_NAME, directory / CA_KEY_NAME)
        return cls(directory, certificate, key)

    def issue(
        self,
        router_id: str,
        out_dir: Path | None = None,
        *,
        valid_for: datetime.timedelta = ROUTER_CERT_VALIDITY,
        valid_from: datetime.datetime | None = None,
    ) -> RouterCertFiles:
        """Write ``<router_id>.crt`` and ``<router_id>.key`` into ``out_dir`` (default: the CA's).

        Valid from ``valid_from`` (default now, back-dated an hour for clock
        skew) for ``valid_for``; a certificate that would outlive the CA is
        refused, since nothing could verify it in its last part.
        """
        check_router_id(router_id)
        if valid_for <= datetime.timedelta(0):
            raise KeysError(f"a router certificate must be valid for some time, not {valid_for}")
        start = valid_from or datetime.datetime.now(datetime.UTC)
        not_after = start + valid_for
        if not_after > self.certificate.not_valid_after_utc:
            raise KeysError(
                f"a certificate valid until {not_after:%Y-%m-%d} would outlive the cluster CA"
                f" (valid until {self.certificate.not_valid_after_utc:%Y-%m-%d}): use fewer days"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        certificate = (
            leaf_builder(router_id, key, self.certificate, self._key, start - BACKDATE, not_after)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(router_id)]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        directory = out_dir or self.directory
        files = RouterCertFiles(
            router_id, directory / f"{router_id}.crt", directory / f"{router_id}.key", not_after
        )
        write_leaf(files.key, key, files.cert, certificate)
        return files
