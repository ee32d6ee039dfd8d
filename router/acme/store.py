"""The ACME state in ``state_dir/acme``: the account key, its URI, the certificates.

Layout (every file mode 0600, the directory 0700)::

    acme/account.key        the account's private key (EC P-256, PEM), made once
    acme/account.json       {"directory": URL, "uri": ACCOUNT-URL}: the registration
    acme/certs/NAME.crt     a certificate chain as the CA sent it
    acme/certs/NAME.key     its private key

``certs`` is laid out as ``tls_cert_dir`` is, so the front door loads it with
the same code (``router.tls.load_certificates``). Each file is written to a
temporary name and renamed over the old one: a crash leaves the old file or
the new one, never half of either. The key is renamed into place before the
certificate, so a certificate on disk always has its key beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hostmux.config.layered import ConfigError


@dataclass(frozen=True)
class StoredCertificate:
    cert_file: Path
    key_file: Path
    not_before: datetime
    not_after: datetime
    names: tuple[str, ...]


class AcmeStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert_dir = directory / "certs"

    def __repr__(self) -> str:
        return f"<AcmeStore {self.directory}>"

    def prepare(self) -> None:
        try:
            self.cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise ConfigError(f"ACME state {self.directory}: {exc.strerror or exc}") from None

    def account_key(self) -> tuple[ec.EllipticCurvePrivateKey, bool]:
        """The account key, made on first use; (key, created)."""
        path = self.directory / "account.key"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write(path, pem)
            return key, True
        except OSError as exc:
            raise ConfigError(f"ACME account key {path}: {exc.strerror or exc}") from None
        try:
            loaded = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"ACME account key {path}: not a PEM private key ({exc})") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"ACME account key {path}: not an EC key")
        return loaded, False

    def account_uri(self, directory_url: str) -> str | None:
        """The account registered at ``directory_url`` earlier, else None."""
        try:
            saved = json.loads((self.directory / "account.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("directory") != directory_url:
            return None  # another CA (staging then production): register again
        uri = saved.get("uri")
        return uri if isinstance(uri, str) else None

    def save_account_uri(self, directory_url: str, uri: str) -> None:
        body = json.dumps({"directory": directory_url, "uri": uri}).encode()
        _write(self.directory / "account.json", body)

    def certificate(self, name: str) -> StoredCertificate | None:
        """The certificate stored as ``name`` (with its key), else None."""
        cert_file, key_file = self._paths(name)
        try:
            leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError):
            return None
        if not key_file.exists():
            return None
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = tuple(san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return StoredCertificate(
            cert_file, key_file, leaf.not_valid_before_utc, leaf.not_valid_after_utc, names
        )

    def save_certificate(self, name: str, chain_pem: bytes, key_pem: bytes) -> StoredCertificate:
        cert_file, key_file = self._paths(name)
        # The key first: a crash between the two leaves a new key beside the old
        # certificate, which loading refuses (a mismatch), and the router orders again.
        _write(key_file, key_pem)
        _write(cert_file, chain_pem)
        stored = self.certificate(name)
        if stored is None:
            raise ValueError(f"the certificate written to {cert_file} does not read back")
        return stored

    def _paths(self, name: str) -> tuple[Path, Path]:
        stem = name.replace("*", "_wildcard")
        return self.cert_dir / f"{stem}.crt", self.cert_dir / f"{stem}.key"


def _write(path: Path, data: bytes) -> None:
    """``data`` into ``path`` (mode 0600) through a temporary file and a rename."""
    # Per process: workers sharing state_dir may write the same file at once.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)


def utc_now() -> datetime:
    return datetime.now(UTC)
