"""TLS for the front door: certificate files, or on-demand certificates from the dev CA.

With certificate files (production: a wildcard for ``*.<domain>``) one context
serves every name. With the development CA (no files configured), a
certificate is issued for each exact host name on its first TLS handshake and
kept on disk: TLS clients (curl, OpenSSL, browsers) refuse wildcards directly
under a single-label domain such as ``*.localhost``, so a wildcard alone would
not work for the default ``*.localhost`` setup.
"""

from __future__ import annotations

import logging
import ssl
from collections import OrderedDict
from pathlib import Path

import keys
from hostmux.config.layered import ConfigError
from hostmux.log import fields
from hostmux.names import normalise_host, target_for_host

log = logging.getLogger("hostmux.tls")

# Contexts kept in memory for the dev CA; older ones are reloaded from disk.
_DEV_CONTEXT_CACHE = 512


def tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _EncryptedKey(Exception):
    """Raised from OpenSSL's password callback: a server cannot stop to ask for one."""


def _refuse_password() -> str:
    raise _EncryptedKey


def configured_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """``tls_context`` for the operator's files; a ConfigError names the file at fault.

    OpenSSL's own errors ("PEM lib", errno 2) do not say which of the two files
    is missing or wrong, so each file is read first and the certificate checked
    on its own before the pair is loaded.
    """
    for option_name, path in (("tls_cert_file", cert_file), ("tls_key_file", key_file)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{option_name} {path}: {exc.strerror or exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        raise ConfigError(f"tls_cert_file {cert_file}: no PEM certificate in it") from None
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except _EncryptedKey:
        raise ConfigError(
            f"tls_key_file {key_file}: the key is encrypted (give an unencrypted one)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"tls_key_file {key_file} does not match the certificate in {cert_file}"
            ) from None
        raise ConfigError(f"tls_key_file {key_file}: not a PEM private key") from None
    return tls_context(cert_file, key_file)


class DevCertificates:
    """Issues and caches a certificate per host name under ``domain``."""

    def __init__(self, files: keys.TlsFiles, domain: str) -> None:
        self._files = files
        self._domain = domain
        self._issued_dir = files.cert.parent / "issued"
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self.default_context = tls_context(files.cert, files.key)
        self.default_context.sni_callback = self._on_server_name

    def __repr__(self) -> str:
        return f"<DevCertificates *.{self._domain} cached={len(self._contexts)}>"

    def _on_server_name(
        self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        host = normalise_host(server_name) if server_name else None
        if host is None or target_for_host(host, self._domain) is None:
            return  # not ours: the default certificate answers (and will not match)
        try:
            sock.context = self._context_for(host)
        except (OSError, ssl.SSLError, keys.KeysError) as exc:
            log.warning(fields("tls_issue_failed", host=host, reason=str(exc)))

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
