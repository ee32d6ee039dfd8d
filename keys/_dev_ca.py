"""A development certificate authority, so local HTTPS works without warnings.

``ensure_dev_tls(directory, domain)`` keeps four PEM files in ``directory``:

- ``dev-ca.pem`` / ``dev-ca-key.pem``: a self-signed EC P-256 CA valid for ten
  years, allowed to sign leaf certificates only (``pathlen 0``). Trust it
  once (browser, ``curl --cacert``, ``ssl`` ``cafile=``) and every leaf it
  issues is trusted.
- ``<domain>.pem`` / ``<domain>-key.pem``: an EC P-256 server certificate for
  ``<domain>`` and ``*.<domain>`` (plus ``127.0.0.1`` and ``::1`` for
  ``localhost``, plus any ``extra_names``), valid for 825 days.

A wildcard needs two labels after the star: OpenSSL (so Python ``ssl`` and
curl) and browsers ignore ``*.localhost``, so ``app.localhost`` is only
trusted when named in ``extra_names``. For wildcard tunnel hosts on one
machine use a two-label domain such as ``hostmux.localhost``, whose
subdomains still resolve to loopback (RFC 6761).

The CA is created once and then never replaced, because replacing it would
silently break every trust store it was added to. The leaf is derived
material: it is issued again whenever it is missing, unreadable, about to
expire, not signed by the CA, or does not name the domain.

Private keys are written ``0600`` from creation on (see ``_files``). This CA
is for development only: its key sits unencrypted next to the certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ._certificates import BACKDATE, create_ca, leaf_builder, load_ca, load_certificate, write_leaf
from ._errors import KeyFileError, KeysError
from ._files import read_key_file

# Shown in trust stores and browser certificate viewers; says what to delete.
CA_COMMON_NAME = "hostmux development CA"

# The longest validity Apple platforms accept for a TLS server certificate.
_LEAF_VALIDITY = datetime.timedelta(days=825)
# Re-issue before expiry so a long-running dev server never serves a dead cert.
_LEAF_RENEW_BEFORE = datetime.timedelta(days=30)

# Loopback addresses a "localhost" certificate also covers, for https://127.0.0.1.
_LOCALHOST_IPS = ("127.0.0.1", "::1")

# One DNS label (RFC 1123); names are validated before they name files.
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # used with fullmatch


@dataclass(frozen=True)
class TlsFiles:
    """Where a server certificate, its key and the CA that signed it live."""

    cert: Path
    key: Path
    ca_cert: Path


def ensure_dev_tls(
    directory: Path, domain: str = "localhost", *, extra_names: Sequence[str] = ()
) -> tuple[TlsFiles, bool]:
    """Make sure ``directory`` holds a dev CA and a certificate for ``domain``.

    ``extra_names`` (DNS names or IP addresses) are added to the certificate's
    names; a certificate missing one of them is issued again.
    Returns the file locations and whether any file was written by this call.
    Raises :class:`KeysError` for an invalid name and :class:`KeyFileError`
    if the existing CA files are unreadable or do not belong together.
    """
    domain = _normalise_name(domain, allow_wildcard=False)
    if _is_ip(domain):
        raise KeysError(f"{domain!r} is an IP address; the domain must be a DNS name")
    ca_cert_path = directory / "dev-ca.pem"
    ca_key_path = directory / "dev-ca-key.pem"
    files = TlsFiles(directory / f"{domain}.pem", directory / f"{domain}-key.pem", ca_cert_path)
    created = False
    if not (ca_cert_path.exists() and ca_key_path.exists()):
        create_ca(ca_cert_path, ca_key_path, CA_COMMON_NAME)
        created = True
    ca_cert, _ = load_ca(ca_cert_path, ca_key_path)
    names = _names_for_domain(domain, extra_names)
    if created or not _leaf_is_current(files, ca_cert, names):
        issue_leaf_certificate(ca_cert_path, ca_key_path, names, files.cert, files.key)
        created = True
    return files, created


def issue_leaf_certificate(
    ca_cert_path: Path,
    ca_key_path: Path,
    names: Sequence[str],
    out_cert: Path,
    out_key: Path,
) -> None:
    """Issue a server certificate for ``names`` (DNS names or IP addresses).

    A fresh EC P-256 key is written to ``out_key`` (0600) and the certificate
    to ``out_cert``. The first name becomes the subject common name.
    Raises :class:`KeyFileError` if the CA files cannot be used.
    """
    if not names:
        raise KeysError("a certificate needs at least one name")
    names = [_normalise_name(name, allow_wildcard=True) for name in names]
    ca_cert, ca_key = load_ca(ca_cert_path, ca_key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        leaf_builder(names[0], key, ca_cert, ca_key, now - BACKDATE, now + _LEAF_VALIDITY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(map(_general_name, names)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_leaf(out_key, key, out_cert, certificate)


def _leaf_is_current(files: TlsFiles, ca_cert: x509.Certificate, names: Sequence[str]) -> bool:
    try:
        leaf = load_certificate(files.cert)
        key = serialization.load_pem_private_key(read_key_file(files.key, "key"), password=None)
        leaf.verify_directly_issued_by(ca_cert)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (KeyFileError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False  # missing, damaged or from another CA: the leaf is ours to replace
    renew_at = datetime.datetime.now(datetime.UTC) + _LEAF_RENEW_BEFORE
    covered = {_general_name(name) for name in names} <= set(san)
    matches_key = key.public_key() == leaf.public_key()
    return covered and matches_key and leaf.not_valid_after_utc > renew_at


def _names_for_domain(domain: str, extra_names: Sequence[str]) -> list[str]:
    names = [f"*.{domain}", domain]
    if domain == "localhost":
        names.extend(_LOCALHOST_IPS)
    for extra in extra_names:
        name = _normalise_name(extra, allow_wildcard=True)
        if name not in names:
            names.append(name)
    return names


def _normalise_name(name: str, *, allow_wildcard: bool) -> str:
    """Return ``name`` as it goes into a certificate, or raise :class:`KeysError`."""
    if _is_ip(name.strip()):
        return str(ipaddress.ip_address(name.strip()))
    normalised = name.strip().lower().removesuffix(".")
    labels = normalised.split(".")
    if allow_wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if len(normalised) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise KeysError(f"{name!r} is not a valid DNS name or IP address")
    return normalised


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
