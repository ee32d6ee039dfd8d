"""Keys and certificates for hostmux: SSH key pairs, instance keys, JWTs and three CAs.

- ``_keypairs``: generate, write, load and fingerprint OpenSSH key pairs; the
  router's host key is created on first start.
- ``_dev_ca``: a local certificate authority and a server certificate for a
  development domain, so ``https://<name>.<domain>`` works without warnings.
- ``_cluster_ca``: the cluster CA (``ca.crt``/``ca.key``) and each router's
  certificate (SAN = its router id, serverAuth + clientAuth).
- ``_cluster_tls``: the server and client TLS contexts of the router-to-router
  link (a certificate from the cluster CA required on both sides) and the
  peer's router id read from its certificate.
- ``_certificates``: the X.509 building blocks the dev CA and cluster CA share.
- ``_instance``: an instance's key (RSA or Ed25519) in every export form the
  DIT4C design uses (PKCS#1, PKCS#8, OpenSSH), its public JWK with the RFC
  7638 thumbprint as ``kid``, and JWK <-> OpenSSH public key conversion.
- ``_jwt``: signing and verifying the JWTs an instance sends the portal with
  its URL updates, with a fixed policy (asymmetric algorithms matched to the
  key, issuer, expiry, bounded lifetime).
- ``_ssh_ca``: an OpenSSH user-certificate authority, so the portal can vouch
  for an instance's key and the router check it offline.
- ``_cli``: the ``hostmux-keys`` command over all of these.

Keys and certificates are ``cryptography``'s; everything JOSE (JWK,
thumbprints, JWS/JWT) is joserfc's; asyncssh stays in the components'
adapters. Errors: ``KeysError`` and its subclasses ``KeyFileError`` and
``JwtError`` (see ``_errors``).
"""

from ._cluster_ca import ClusterCA, RouterCertFiles, check_router_id
from ._cluster_tls import check_router_certificate, cluster_tls_contexts, peer_router_id
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
from ._ssh_ca import (
    CertificateValidity,
    SshCertificateAuthority,
    certificate_validity,
    load_or_create_ssh_ca,
)

__all__ = [
    "CertificateValidity",
    "ClusterCA",
    "InstanceKey",
    "JwtError",
    "KeyFileError",
    "KeyPair",
    "KeysError",
    "RouterCertFiles",
    "SshCertificateAuthority",
    "TlsFiles",
    "certificate_validity",
    "check_router_certificate",
    "check_router_id",
    "cluster_tls_contexts",
    "ensure_dev_tls",
    "fingerprint_of_public_line",
    "generate_keypair",
    "issue_leaf_certificate",
    "jwk_thumbprint",
    "load_keypair",
    "load_or_create_host_key",
    "load_or_create_ssh_ca",
    "openssh_public_from_jwk",
    "peer_router_id",
    "public_jwk_from_openssh",
    "sign_jwt",
    "verify_jwt",
    "write_keypair",
]
