"""Keys and certificates for hostmux: SSH key pairs and a development TLS CA.

- ``_keypairs``: generate, write, load and fingerprint OpenSSH key pairs; the
  router's host key is created on first start.
- ``_dev_ca``: a local certificate authority and a server certificate for a
  development domain, so ``https://<name>.<domain>`` works without warnings.
- ``_instance``, ``_jwt``: instance keys in every export form, JWKs with RFC
  7638 thumbprints, and signed JWTs (joserfc) for the portal's URL updates.
- ``_ssh_ca``: an OpenSSH user-certificate authority for portal instances.
- ``_cli``: the ``hostmux-keys`` command over both.

Only ``cryptography`` is used here; asyncssh stays in the components' adapters.
Errors: ``KeysError`` and its subclass ``KeyFileError`` (see ``_errors``).
"""

from ._dev_ca import TlsFiles, ensure_dev_tls, issue_leaf_certificate
from ._errors import KeyFileError, KeysError
from ._instance import (
    InstanceKey,
    jwk_thumbprint,
    openssh_public_from_jwk,
    public_jwk_from_openssh,
)
from ._jwt import JwtError, sign_jwt, verify_jwt
from ._keypairs import (
    KeyPair,
    fingerprint_of_public_line,
    generate_keypair,
    load_keypair,
    load_or_create_host_key,
    write_keypair,
)
from ._ssh_ca import SshCertificateAuthority, load_or_create_ssh_ca

__all__ = [
    "InstanceKey",
    "JwtError",
    "KeyFileError",
    "KeyPair",
    "KeysError",
    "SshCertificateAuthority",
    "TlsFiles",
    "ensure_dev_tls",
    "fingerprint_of_public_line",
    "generate_keypair",
    "issue_leaf_certificate",
    "jwk_thumbprint",
    "load_keypair",
    "load_or_create_host_key",
    "load_or_create_ssh_ca",
    "openssh_public_from_jwk",
    "public_jwk_from_openssh",
    "sign_jwt",
    "verify_jwt",
    "write_keypair",
]
