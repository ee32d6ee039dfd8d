"""The router's state on disk, made on first run and checked before anything listens.

The SSH host key, the development CA (when no certificate files are given),
the seeded ``authorized_keys``, and the TLS contexts built from either. Every
fault here is a ``ConfigError`` naming the file: the router says it in one
line and exits 2, before it binds a port or logs ``router_ready``.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import keys
from hostmux.config.layered import ConfigError
from hostmux.log import fields
from router.config import RouterConfig
from router.tls import CertificateSet, DevCertificates, FrontDoorTls, load_certificates

log = logging.getLogger("hostmux.router")


@dataclass(frozen=True)
class RouterState:
    host_key: Path
    host_key_fingerprint: str
    tls_cert: Path | None
    tls_key: Path | None
    dev_tls: keys.TlsFiles | None  # set when the development CA serves TLS

    @property
    def ca_cert(self) -> Path | None:
        return self.dev_tls.ca_cert if self.dev_tls else None


def prepare_state(config: RouterConfig) -> RouterState:
    """Create the host key, dev CA and authorized_keys on first run."""
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pair, created = keys.load_or_create_host_key(config.host_key_path)
    except (OSError, keys.KeysError) as exc:
        raise ConfigError(f"host key {config.host_key_path}: {exc}") from None
    if created:
        log.info(fields("host_key_created", path=str(config.host_key_path), key=pair.fingerprint))
    tls_cert, tls_key, dev_tls = config.tls_cert_file, config.tls_key_file, None
    if config.https_listen and tls_cert is None:
        try:
            dev_tls, created = keys.ensure_dev_tls(config.state_dir / "tls", config.domain)
        except (OSError, keys.KeysError) as exc:
            raise ConfigError(f"development CA in {config.state_dir / 'tls'}: {exc}") from None
        if created:
            log.info(fields("dev_ca_created", ca=dev_tls.ca_cert, cert=dev_tls.cert))
    if config.authorized_keys_file is None and not config.authorized_keys_path.exists():
        _seed_authorized_keys(config.authorized_keys_path)
    return RouterState(config.host_key_path, pair.fingerprint, tls_cert, tls_key, dev_tls)


def _seed_authorized_keys(path: Path) -> None:
    """First run with the default file: trust the user's own SSH keys, as a try-out."""
    home_keys = sorted(Path("~/.ssh").expanduser().glob("id_*.pub"))
    lines = [p.read_text().strip() for p in home_keys if p.is_file()]
    header = "# Keys allowed to open tunnels (OpenSSH authorized_keys format).\n"
    header += '# Restrict a key to names with: permitlisten="name1",permitlisten="dev-*" ssh-...\n'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(header + "".join(line + "\n" for line in lines))
    log.info(fields("authorized_keys_created", path=str(path), keys=len(lines)))


def file_certificates(config: RouterConfig) -> CertificateSet | None:
    """The operator's certificates (``tls_cert_file``/``tls_key_file``, ``tls_cert_dir``),
    when something serves TLS; a ConfigError names a bad file."""
    if not (config.https_listen or config.one_port_listen):
        return None
    return load_certificates(config.tls_cert_file, config.tls_key_file, config.tls_cert_dir)


def front_door_tls(
    config: RouterConfig, state: RouterState, certificates: CertificateSet | None
) -> FrontDoorTls | None:
    """The front door's TLS: the operator's certificates, with the development CA
    issuing for names they do not serve when no certificate files are given."""
    if certificates is None:
        return None
    dev = None
    if state.dev_tls is not None:
        try:
            dev = DevCertificates(state.dev_tls, config.domain)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"development CA in {config.state_dir / 'tls'}: {exc}") from None
    if certificates.default is None and dev is None:
        return None
    return FrontDoorTls(certificates, dev)


def dev_ca_pem(state: RouterState) -> str | None:
    """The development CA's certificate for the ``ca`` command (read once: it is made at start)."""
    if state.ca_cert is None:
        return None
    try:
        return state.ca_cert.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"development CA {state.ca_cert}: {exc}") from None
