"""X.509 building blocks both certificate authorities use (dev CA, cluster CA).

One way to make a CA, load it back, and write keys and certificates, so the
two CAs cannot drift apart on the details that matter: EC P-256 keys (every
TLS stack accepts them, for server and client authentication alike), a
``pathlen 0`` CA that signs leaves only, ``0600`` private keys, and
``KeyFileError`` naming the file for anything unreadable or mismatched.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ._errors import KeyFileError
from ._files import read_key_file, write_key_file

# Long enough that nobody has to re-trust a CA during a project's life.
CA_VALIDITY = datetime.timedelta(days=3650)
# Tolerate a peer clock that is a little behind the one that issued the cert.
BACKDATE = datetime.timedelta(hours=1)

# Other users must not read the keys; the certificates are public.
KEY_MODE = 0o600
CERT_MODE = 0o644


def create_ca(cert_path: Path, key_path: Path, common_name: str, *, replace: bool = True) -> bool:
    """Write a self-signed EC P-256 CA (``pathlen 0``, ten years) to the two paths.

    The key is written first. With ``replace=False`` an existing key wins and
    ``False`` is returned with nothing written, so two processes creating the
    same CA agree on one.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    if not write_key_file(key_path, private_pem(key), mode=KEY_MODE, replace=replace):
        return False
    write_certificate(cert_path, certificate)
    return True


def load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Return a CA's certificate and key, checked to belong together."""
    certificate = load_certificate(cert_path)
    data = read_key_file(key_path, "CA key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise KeyFileError(f"{key_path} is not an unencrypted PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"CA key {key_path} is not an EC key")
    if key.public_key() != certificate.public_key():
        raise KeyFileError(f"CA key {key_path} does not belong to {cert_path}")
    return certificate, key


def load_certificate(path: Path) -> x509.Certificate:
    data = read_key_file(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise KeyFileError(f"{path} is not a PEM certificate") from error


def leaf_builder(
    subject_name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    """The extensions every leaf shares; the caller adds EKU and SAN, then signs."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )


def write_leaf(
    key_path: Path, key: ec.EllipticCurvePrivateKey, cert_path: Path, cert: x509.Certificate
) -> None:
    # Key first: a certificate on disk without its key would look current.
    write_key_file(key_path, private_pem(key), mode=KEY_MODE)
    write_certificate(cert_path, cert)


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    write_key_file(path, certificate.public_bytes(serialization.Encoding.PEM), mode=CERT_MODE)


def key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
