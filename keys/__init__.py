"""Keys and certificates for hostmux: SSH key pairs and a development TLS CA.

- ``_keypairs``: generate, write, load and fingerprint OpenSSH key pairs; the
  router's host key is created on first start.
- ``_dev_ca``: a local certificate authority and a server certificate for a
  development domain, so ``https://<name>.<domain>`` works without warnings.
- ``_cli``: the ``hostmux-keys`` command over both.

Only ``cryptography`` is used here; asyncssh stays in the components' adapters.
Errors: ``KeysError`` and its subclass ``KeyFileError`` (see ``_errors``).
"""

from ._dev_ca import TlsFiles, ensure_dev_tls, issue_leaf_certificate
from ._errors import KeyFileError, KeysError
from ._keypairs import (
    KeyPair,
    fingerprint_of_public_line,
    generate_keypair,
    load_keypair,
    load_or_create_host_key,
    write_keypair,
)

__all__ = [
    "KeyFileError",
    "KeyPair",
    "KeysError",
    "TlsFiles",
    "ensure_dev_tls",
    "fingerprint_of_public_line",
    "generate_keypair",
    "issue_leaf_certificate",
    "load_keypair",
    "load_or_create_host_key",
    "write_keypair",
]
