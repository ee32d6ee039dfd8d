"""TLS for the front door: the certificates, chosen per handshake by SNI, swapped on reload.

Where a handshake's certificate comes from, first match wins:

1. ``tls_cert_dir``: per-host certificates, each serving the DNS names in its
   subjectAltName; an exact name beats a wildcard (``*.example.org`` covers
   one label: ``a.example.org``, not ``a.b.example.org``);
2. the certificate from ACME (``router.acme``), by the same rules, swapped in
   by ``FrontDoorTls.replace_acme``;
3. with the development CA (no certificate files configured), a certificate
   issued for each exact host name under the domain on its first handshake and
   kept on disk: TLS clients (curl, OpenSSL, browsers) refuse wildcards directly
   under a single-label domain such as ``*.localhost``, so a wildcard alone
   would not work for the default ``*.localhost`` setup;
4. the default: ``tls_cert_file``/``tls_key_file`` (or ACME's certificate for the
   domain, else the dev CA's leaf), which also answers a client that sends no
   SNI or a name nothing else serves.

The servers are given one context (``FrontDoorTls.context``) for good; its
``sni_callback`` switches each connection's ``SSLObject.context`` to the chosen
one, so a reload (``FrontDoorTls.replace``) swaps the certificates for new
handshakes while connections already made keep theirs. Loading a new set is
all or nothing: one bad file is a ConfigError naming it, and the old set stays.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

import keys
from hostmux.config.layered import ConfigError
from hostmux.log import fields
from hostmux.names import normalise_host, target_for_host

log = logging.getLogger("hostmux.tls")

# Contexts kept in memory for the dev CA; older ones are reloaded from disk.
_DEV_CONTEXT_CACHE = 512
# Reason: a directory of per-host certificates is an operator's, not an ACME cache of
# millions; beyond this many a typo (the wrong directory) is the likelier cause.
MAX_CERT_DIR_FILES = 10_000


# Each front-door context's files, for the contexts made from it that also ask for a
# client certificate (``router.client_certs``: a context cannot be copied).
_FILES: weakref.WeakKeyDictionary[ssl.SSLContext, tuple[Path, Path | None]] = (
    weakref.WeakKeyDictionary()
)


def tls_context(cert_file: Path, key_file: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    _FILES[context] = (cert_file, key_file)
    return context


def certificate_files(context: ssl.SSLContext) -> tuple[Path, Path | None] | None:
    """The certificate and key files ``context`` (from ``tls_context``) was loaded from."""
    return _FILES.get(context)


class _EncryptedKey(Exception):
    """Raised from OpenSSL's password callback: a server cannot stop to ask for one."""


def _refuse_password() -> str:
    raise _EncryptedKey


def configured_tls_context(
    cert_file: Path,
    key_file: Path | None,
    *,
    cert_option: str = "tls_cert_file",
    key_option: str = "tls_key_file",
) -> ssl.SSLContext:
    """``tls_context`` for the operator's files; a ConfigError names the file at fault.

    OpenSSL's own errors ("PEM lib", errno 2) do not say which of the two files
    is missing or wrong, so each file is read first and the certificate checked
    on its own before the pair is loaded. ``key_file`` None: the key is in
    ``cert_file`` (a ``.pem`` holding both).
    """
    key_path = key_file or cert_file
    for option_name, path in ((cert_option, cert_file), (key_option, key_path)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{option_name} {path}: {exc.strerror or exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        raise ConfigError(f"{cert_option} {cert_file}: no PEM certificate in it") from None
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except _EncryptedKey:
        raise ConfigError(
            f"{key_option} {key_path}: the key is encrypted (give an unencrypted one)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{key_option} {key_path} does not match the certificate in {cert_file}"
            ) from None
        raise ConfigError(f"{key_option} {key_path}: not a PEM private key") from None
    return tls_context(cert_file, key_file)


@dataclass(frozen=True)
class CertificateSet:
    """The operator's certificates at one moment: the default and ``tls_cert_dir``'s."""

    default: ssl.SSLContext | None  # None: the development CA's leaf is the default
    exact: Mapping[str, ssl.SSLContext] = field(default_factory=dict)
    wildcard: Mapping[str, ssl.SSLContext] = field(default_factory=dict)  # by parent domain
    files: tuple[Path, ...] = ()  # what was loaded, for the log line
    # The default certificate's leaf as loaded, for /readyz: the file may have changed
    # since (a reload that kept the old set, or a new file not yet reloaded).
    default_leaf: x509.Certificate | None = None

    def for_host(self, host: str) -> ssl.SSLContext | None:
        """The per-host certificate for ``host`` (exact first, then wildcard), else None."""
        found = self.exact.get(host)
        if found is None and self.wildcard:
            found = self.wildcard.get(host.partition(".")[2])
        return found


def load_certificates(
    cert_file: Path | None, key_file: Path | None, cert_dir: Path | None
) -> CertificateSet:
    """The default certificate (when files are given) and ``cert_dir``'s; a ConfigError
    names the first bad file (nothing is half loaded)."""
    default = default_leaf = None
    files: list[Path] = []
    if cert_file is not None and key_file is not None:
        default = configured_tls_context(cert_file, key_file)
        default_leaf = _leaf(cert_file)
        files.append(cert_file)
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    served_by: dict[str, Path] = {}
    for cert, key in _cert_dir_pairs(cert_dir) if cert_dir is not None else []:
        context = configured_tls_context(
            cert, key, cert_option="tls_cert_dir", key_option="tls_cert_dir"
        )
        files.append(cert)
        for name in _dns_names(cert):
            if name in served_by:
                raise ConfigError(
                    f"tls_cert_dir {cert}: {name} is already served by {served_by[name].name}"
                )
            served_by[name] = cert
            if name.startswith("*."):
                wildcard[name[2:]] = context
            else:
                exact[name] = context
    return CertificateSet(default, exact, wildcard, tuple(files), default_leaf)


def _leaf(cert_file: Path) -> x509.Certificate:
    """The first certificate in ``cert_file`` (just loaded into a context, so PEM)."""
    try:
        return x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:  # replaced in between: rare
        raise ConfigError(f"tls_cert_file {cert_file}: {exc}") from None


def _cert_dir_pairs(directory: Path) -> list[tuple[Path, Path | None]]:
    """``NAME.crt`` with ``NAME.key``, or ``NAME.pem`` holding both; hidden files skipped
    (a Kubernetes secret volume's ``..data``)."""
    try:
        entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise ConfigError(f"tls_cert_dir {directory}: {exc.strerror or exc}") from None
    if len(entries) > MAX_CERT_DIR_FILES:
        raise ConfigError(f"tls_cert_dir {directory}: more than {MAX_CERT_DIR_FILES} files")
    names = {p.name for p in entries}
    pairs: list[tuple[Path, Path | None]] = []
    for path in entries:
        if path.suffix == ".pem":
            pairs.append((path, None))
        elif path.suffix == ".crt":
            key = path.with_suffix(".key")
            if key.name not in names:
                raise ConfigError(f"tls_cert_dir {path}: no {key.name} beside it")
            pairs.append((path, key))
        elif path.suffix == ".key" and path.with_suffix(".crt").name not in names:
            raise ConfigError(f"tls_cert_dir {path}: no {path.with_suffix('.crt').name} beside it")
    return pairs


def _dns_names(cert_file: Path) -> list[str]:
    """The DNS names in the first certificate's subjectAltName, lower-cased."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        names = []
    if not names:
        raise ConfigError(f"tls_cert_dir {cert_file}: no DNS names (subjectAltName) in it")
    return [name.lower().rstrip(".") for name in names]


class FrontDoorTls:
    """The context the front door serves with, choosing each handshake's certificate.

    ``context`` is what every server and one-port listener is given; it answers
    only when no other is chosen (it holds the first default certificate).
    """

    def __init__(self, certificates: CertificateSet, dev: DevCertificates | None) -> None:
        self._certificates = certificates
        self._dev = dev
        self._acme = CertificateSet(None)
        context = certificates.default or (dev.default_context if dev is not None else None)
        if context is None:
            raise ValueError("FrontDoorTls needs a default certificate or a development CA")
        self.context = context
        self.context.sni_callback = self._on_server_name

    def __repr__(self) -> str:
        certs = self._certificates
        return f"<FrontDoorTls hosts={len(certs.exact)} wildcards={len(certs.wildcard)}>"

    @property
    def certificates(self) -> CertificateSet:
        return self._certificates

    def replace(self, certificates: CertificateSet) -> None:
        """New handshakes from now on use ``certificates``; made connections keep theirs."""
        self._certificates = certificates

    def replace_acme(self, certificates: CertificateSet, domain: str) -> None:
        """ACME's certificates for new handshakes from now on; the one serving ``domain``
        also answers when nothing else does (no SNI), unless ``tls_cert_file`` is set."""
        self._acme = CertificateSet(
            certificates.for_host(domain),
            certificates.exact,
            certificates.wildcard,
            certificates.files,
        )

    @property
    def acme_certificates(self) -> CertificateSet:
        return self._acme

    def _on_server_name(
        self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        chosen = self._chosen(normalise_host(server_name) if server_name else None)
        if chosen is not None and chosen is not self.context:
            sock.context = chosen

    def context_for_host(self, host: str | None) -> ssl.SSLContext:
        """The context whose certificate a handshake with SNI ``host`` gets."""
        return self._chosen(host) or self.context

    def _chosen(self, host: str | None) -> ssl.SSLContext | None:
        chosen = None
        if host is not None:
            chosen = self._certificates.for_host(host) or self._acme.for_host(host)
        if chosen is None and host is not None and self._dev is not None:
            chosen = self._dev.context_for(host)
        if chosen is None:
            chosen = self._certificates.default or self._acme.default
        return chosen


class DevCertificates:
    """Issues and caches a certificate per host name under ``domain``."""

    def __init__(self, files: keys.TlsFiles, domain: str) -> None:
        self._files = files
        self._domain = domain
        self._issued_dir = files.cert.parent / "issued"
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self.default_context = tls_context(files.cert, files.key)

    def __repr__(self) -> str:
        return f"<DevCertificates *.{self._domain} cached={len(self._contexts)}>"

    def context_for(self, host: str) -> ssl.SSLContext | None:
        """``host``'s own certificate when it is under the domain (issued on first use),
        else None (the default certificate answers, and will not match)."""
        if target_for_host(host, self._domain) is None:
            return None
        try:
            return self._context_for(host)
        except (OSError, ssl.SSLError, keys.KeysError) as exc:
            log.warning(fields("tls_issue_failed", host=host, reason=str(exc)))
            return None

    def _context_for(self, host: str) -> ssl.SSLContext:
        context = self._contexts.get(host)
        if context is not None:
            self._contexts.move_to_end(host)
            return context
        cert, key = self._issued_dir / f"{host}.pem", self._issued_dir / f"{host}-key.pem"
        if not (cert.exists() and key.exists()):
            self._issued_dir.mkdir(mode=0o700, exist_ok=True)
            keys.issue_leaf_certificate(
                self._files.ca_cert, _ca_key(self._files), [host], cert, key
            )
            log.info(fields("tls_issued", host=host, ca=str(self._files.ca_cert)))
        context = tls_context(cert, key)
        self._contexts[host] = context
        if len(self._contexts) > _DEV_CONTEXT_CACHE:
            self._contexts.popitem(last=False)
        return context


def _ca_key(files: keys.TlsFiles) -> Path:
    return files.ca_cert.with_name(files.ca_cert.stem + "-key.pem")
