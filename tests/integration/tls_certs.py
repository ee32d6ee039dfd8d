"""Test certificates made with ``cryptography``: a CA, server and client leaves, a CRL."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Ca:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path  # the CA certificate alone (PEM)


@dataclass
class Leaf:
    certificate: x509.Certificate
    pem: Path  # certificate then key (curl --cert, load_cert_chain)
    cert_file: Path  # the certificate alone
    key_file: Path

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostmux tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(directory: Path, common_name: str) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / f"{common_name}.crt"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Ca(certificate, key, cert_file)


def issue(
    ca: Ca, directory: Path, common_name: str, *, server_names: list[str] | None = None
) -> Leaf:
    """A leaf signed by ``ca``: a server's for ``server_names`` (DNS names or IP
    addresses), else a client's."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_alt_name(n) for n in server_names]), critical=False
        )
    certificate = builder.sign(ca.key, hashes.SHA256())
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    base = directory / common_name.replace(" ", "_")
    cert_file, key_file, pem = (
        base.with_suffix(".crt"), base.with_suffix(".key"), base.with_suffix(".pem")
    )  # fmt: skip
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(_key_pem(key))
    pem.write_bytes(cert_pem + _key_pem(key))
    return Leaf(certificate, pem, cert_file, key_file)


def revoke(ca: Ca, directory: Path, *revoked: Leaf) -> Path:
    """A PEM CRL from ``ca`` listing ``revoked``."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=1))
    )
    for leaf in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(leaf.certificate.serial_number)
            .revocation_date(now - timedelta(minutes=5))
            .build()
        )
    path = directory / "revoked.crl"
    path.write_bytes(builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path
