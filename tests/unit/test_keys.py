"""Tests for the ``keys`` package: SSH key pairs, the dev CA and ``hostmux-keys``.

OpenSSH's own ``ssh-keygen`` is the judge of key files and fingerprints (those
checks skip when it is not installed). TLS certificates are judged by Python's
``ssl`` in a handshake between two ``MemoryBIO`` ends: no sockets, no ports.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keys import (
    KeyFileError,
    KeyPair,
    KeysError,
    TlsFiles,
    ensure_dev_tls,
    fingerprint_of_public_line,
    generate_keypair,
    issue_leaf_certificate,
    load_keypair,
    load_or_create_host_key,
    write_keypair,
)
from keys._cli import main

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen not installed")

# The smallest accepted RSA size keeps the RSA tests fast.
FAST_RSA_BITS = 2048


def ssh_keygen(*args: str) -> str:
    assert SSH_KEYGEN is not None
    result = subprocess.run(
        [SSH_KEYGEN, *args], capture_output=True, text=True, check=True, timeout=30
    )
    return result.stdout


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- SSH key pairs -------------------------------------------------------------------------


@needs_ssh_keygen
@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, algorithm: str) -> None:
    pair = generate_keypair("rsa" if algorithm == "rsa" else "ed25519", rsa_bits=FAST_RSA_BITS)
    write_keypair(pair, tmp_path / "id")

    shown = ssh_keygen("-l", "-E", "sha256", "-f", str(tmp_path / "id.pub")).split()

    assert shown[1] == pair.fingerprint
    assert fingerprint_of_public_line(pair.public_openssh) == pair.fingerprint


@needs_ssh_keygen
@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_private_key_is_read_by_ssh_keygen(tmp_path: Path, algorithm: str) -> None:
    pair = generate_keypair(
        "rsa" if algorithm == "rsa" else "ed25519", rsa_bits=FAST_RSA_BITS, comment="me@laptop"
    )
    write_keypair(pair, tmp_path / "id")

    derived = ssh_keygen("-y", "-f", str(tmp_path / "id")).split()

    assert derived[:2] == pair.public_openssh.split()[:2]


def test_public_line_has_type_key_and_comment() -> None:
    pair = generate_keypair(comment="alice@laptop")

    key_type, encoded, comment = pair.public_openssh.split(" ")

    assert (key_type, comment) == ("ssh-ed25519", "alice@laptop")
    assert base64.b64decode(encoded)[4:15] == b"ssh-ed25519"
    assert pair.private_openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert pair.fingerprint.startswith("SHA256:") and not pair.fingerprint.endswith("=")
    assert pair.fingerprint in repr(pair) and "PRIVATE" not in repr(pair)


def test_private_key_is_created_0600_in_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "id_ed25519"

    write_keypair(generate_keypair(), path)

    assert mode_of(path) == 0o600
    assert mode_of(path.parent) & 0o077 == 0
    assert mode_of(path.parent.parent) & 0o077 == 0
    assert path.with_name("id_ed25519.pub").read_text().startswith("ssh-ed25519 ")


def test_rewriting_a_world_readable_key_leaves_it_0600(tmp_path: Path) -> None:
    path = tmp_path / "id"
    path.write_bytes(b"old")
    path.chmod(0o644)

    write_keypair(generate_keypair(), path)

    assert mode_of(path) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rsa_keypair_round_trips_through_file(tmp_path: Path) -> None:
    pair = generate_keypair("rsa", rsa_bits=FAST_RSA_BITS, comment="ci")
    write_keypair(pair, tmp_path / "id_rsa")

    loaded = load_keypair(tmp_path / "id_rsa")

    assert loaded == pair
    assert pair.public_openssh.startswith("ssh-rsa AAAAB3NzaC1yc2E")


@pytest.mark.parametrize("bits", [1024, 2047, 8200])
def test_rsa_size_outside_range_is_refused(bits: int) -> None:
    with pytest.raises(ValueError, match=r"2048\.\.8192"):
        generate_keypair("rsa", rsa_bits=bits)


def test_pem_private_key_is_loaded_as_openssh(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "key.pem").write_bytes(pem)

    pair = load_keypair(tmp_path / "key.pem")

    expected = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert pair.public_openssh == expected.decode()
    assert pair.private_openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a key\n", "not an OpenSSH or PEM private key"),
        (os.urandom(64), "not an OpenSSH or PEM private key"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
         "not an OpenSSH or PEM private key"),
    ],
)  # fmt: skip
def test_garbage_key_file_raises_key_file_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "id").write_bytes(content)

    with pytest.raises(KeyFileError, match=message) as caught:
        load_keypair(tmp_path / "id")

    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, KeysError)


def test_missing_and_encrypted_key_files_raise_key_file_error(tmp_path: Path) -> None:
    # PKCS#8: encrypting the OpenSSH format would need the bcrypt package.
    encrypted = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "encrypted").write_bytes(encrypted)

    with pytest.raises(KeyFileError, match=r"cannot read private key .*missing"):
        load_keypair(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="is encrypted"):
        load_keypair(tmp_path / "encrypted")
    with pytest.raises(KeyFileError, match="Is a directory"):
        load_keypair(tmp_path)


@needs_ssh_keygen
def test_encrypted_openssh_key_raises_key_file_error(tmp_path: Path) -> None:
    ssh_keygen("-q", "-t", "ed25519", "-N", "secret", "-f", str(tmp_path / "id"))

    with pytest.raises(KeyFileError, match="is encrypted; hostmux needs an unencrypted key"):
        load_keypair(tmp_path / "id")


def test_host_key_is_created_once_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "host_key"

    created, was_created = load_or_create_host_key(path)
    reused, was_created_again = load_or_create_host_key(path)

    assert (was_created, was_created_again) == (True, False)
    assert reused == created
    assert isinstance(created, KeyPair) and mode_of(path) == 0o600


def test_fingerprint_finds_key_behind_options_and_host_patterns() -> None:
    pair = generate_keypair(comment="bob")
    _, encoded, _ = pair.public_openssh.split(" ")

    lines = [
        pair.public_openssh,
        f'command="echo hi there",no-pty {pair.public_openssh}',
        f"host.example,10.0.0.1 ssh-ed25519 {encoded}",
        f"@cert-authority *.example ssh-ed25519 {encoded}",
    ]

    assert {fingerprint_of_public_line(line) for line in lines} == {pair.fingerprint}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "hello world",
        "ssh-ed25519 not-base64!",
        "ssh-rsa " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519xxxx").decode(),
        "ssh-ed25519-cert-v01@openssh.com "
        + base64.b64encode(b"\x00\x00\x00\x20ssh-ed25519-cert-v01@openssh.comxxxx").decode(),
    ],
)
def test_fingerprint_of_garbage_line_raises_key_file_error(line: str) -> None:
    with pytest.raises(KeyFileError):
        fingerprint_of_public_line(line)


# --- Development CA ------------------------------------------------------------------------


def tls_handshake(files: TlsFiles, hostname: str) -> None:
    """Connect a client trusting only the dev CA to a server using the leaf, in memory.

    Raises ``ssl.SSLCertVerificationError`` if the client rejects the certificate.
    """
    client_context = ssl.create_default_context(cafile=str(files.ca_cert))
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13 on
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname=hostname)
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    # TLS 1.3 needs two round trips at most; a few more rounds cost nothing.
    for _ in range(6):
        finished = True
        for end in (client, server):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                finished = False
        if finished:
            return
    raise AssertionError("TLS handshake did not finish")


def test_dev_ca_files_have_the_promised_shape(tmp_path: Path) -> None:
    files, created = ensure_dev_tls(tmp_path / "tls")

    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert created
    tls = tmp_path / "tls"
    assert files == TlsFiles(tls / "localhost.pem", tls / "localhost-key.pem", tls / "dev-ca.pem")
    assert ca.subject.rfc4514_string() == "CN=hostmux development CA"
    assert (constraints.ca, constraints.path_length) == (True, 0)
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == 825
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert [str(v) for v in san.get_values_for_type(x509.DNSName)] == ["*.localhost", "localhost"]
    assert [str(v) for v in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert mode_of(files.key) == 0o600 and mode_of(tmp_path / "tls/dev-ca-key.pem") == 0o600


def test_dev_ca_leaf_verifies_for_localhost_names(tmp_path: Path) -> None:
    # OpenSSL ignores a wildcard with one label after it ("*.localhost"), so a
    # single-label subdomain such as app.localhost is trusted only when named.
    files, _ = ensure_dev_tls(tmp_path, extra_names=["app.localhost"])

    for hostname in ("localhost", "app.localhost", "127.0.0.1", "::1"):
        tls_handshake(files, hostname)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(files, "app.example.org")


def test_dev_ca_wildcard_covers_tunnel_subdomains(tmp_path: Path) -> None:
    files, _ = ensure_dev_tls(tmp_path, "hostmux.localhost")

    tls_handshake(files, "app.hostmux.localhost")
    tls_handshake(files, "hostmux.localhost")
    for wrong in ("app.example.org", "a.b.hostmux.localhost", "hostmux.localhost.evil"):
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_handshake(files, wrong)


def test_dev_ca_reuses_leaf_and_reissues_it_when_deleted(tmp_path: Path) -> None:
    files, _ = ensure_dev_tls(tmp_path)
    ca_before, leaf_before = files.ca_cert.read_bytes(), files.cert.read_bytes()

    _, created_again = ensure_dev_tls(tmp_path)
    assert not created_again
    assert files.cert.read_bytes() == leaf_before

    files.cert.unlink()
    _, reissued = ensure_dev_tls(tmp_path)
    assert reissued
    assert files.cert.read_bytes() != leaf_before
    assert files.ca_cert.read_bytes() == ca_before
    tls_handshake(files, "localhost")


def test_dev_ca_reissues_stale_leaf(tmp_path: Path) -> None:
    """A leaf is stale if it misses a name, expires within 30 days or lost its key."""
    files, _ = ensure_dev_tls(tmp_path)
    ca_key_path = tmp_path / "dev-ca-key.pem"

    issue_leaf_certificate(files.ca_cert, ca_key_path, ["other.test"], files.cert, files.key)
    assert ensure_dev_tls(tmp_path)[1]

    write_expiring_leaf(files, ca_key_path, days_left=10)
    assert ensure_dev_tls(tmp_path)[1]

    files.key.write_bytes(b"damaged")
    assert ensure_dev_tls(tmp_path)[1]
    assert not ensure_dev_tls(tmp_path)[1]
    tls_handshake(files, "localhost")


def write_expiring_leaf(files: TlsFiles, ca_key_path: Path, days_left: int) -> None:
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName("*.localhost"), x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days_left))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))


def test_issue_leaf_certificate_for_a_second_domain(tmp_path: Path) -> None:
    files, _ = ensure_dev_tls(tmp_path)
    other = TlsFiles(tmp_path / "other.pem", tmp_path / "other-key.pem", files.ca_cert)

    issue_leaf_certificate(
        files.ca_cert, tmp_path / "dev-ca-key.pem", ["*.other.test", "other.test"],
        other.cert, other.key,
    )  # fmt: skip

    tls_handshake(other, "app.other.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(other, "app.localhost")
    assert mode_of(other.key) == 0o600


@pytest.mark.parametrize("domain", ["", "bad domain", "-x.test", "127.0.0.1", "a..b"])
def test_dev_ca_refuses_invalid_domain(tmp_path: Path, domain: str) -> None:
    with pytest.raises(KeysError):
        ensure_dev_tls(tmp_path, domain)
    assert not (tmp_path / "dev-ca.pem").exists()


def test_dev_ca_with_damaged_ca_key_raises_key_file_error(tmp_path: Path) -> None:
    ensure_dev_tls(tmp_path)
    (tmp_path / "dev-ca-key.pem").write_bytes(b"garbage")

    with pytest.raises(KeyFileError, match=r"dev-ca-key\.pem"):
        ensure_dev_tls(tmp_path)


# --- hostmux-keys ----------------------------------------------------------------------------


def assert_one_line_error(stderr: str, fragment: str) -> None:
    assert stderr.startswith("hostmux-keys: error: ")
    assert stderr.count("\n") == 1
    assert fragment in stderr
    assert "Traceback" not in stderr


def test_cli_keypair_writes_files_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "id_ed25519"

    assert main(["keypair", "-C", "dev", str(path)]) == 0
    written = capsys.readouterr()
    pair = load_keypair(path)
    assert pair.public_openssh in written.out and pair.fingerprint in written.out
    private_before = path.read_bytes()

    assert main(["keypair", str(path)]) == 2
    refused = capsys.readouterr()
    assert_one_line_error(refused.err, "already exists")
    assert refused.out == ""
    assert path.read_bytes() == private_before

    assert main(["keypair", "-f", "-t", "rsa", "-b", str(FAST_RSA_BITS), str(path)]) == 0
    assert load_keypair(path).public_openssh.startswith("ssh-rsa ")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["keypair", "-t", "rsa", "-b", "1024", "x"], "2048..8192"),
        (["keypair", "-b", "4096", "x"], "-t rsa"),
        (["keypair", "-t", "dsa", "x"], "invalid choice"),
        (["fingerprint"], "required"),
        ([], "required"),
        (["dev-ca", "--domain", "not a domain"], "not a valid DNS name"),
    ],
)
def test_cli_usage_errors_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # any file a wrong argument might create lands here

    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_cli_fingerprint_lists_each_key_in_authorized_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = generate_keypair(comment="one"), generate_keypair(comment="two")
    authorized_keys = tmp_path / "authorized_keys"
    authorized_keys.write_text(
        f"# team keys\n\n{first.public_openssh}\nno-pty {second.public_openssh}\n"
    )

    assert main(["fingerprint", str(authorized_keys)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{first.fingerprint} ssh-ed25519 one",
        f"{second.fingerprint} ssh-ed25519 two",
    ]


def test_cli_fingerprint_of_private_key_and_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = generate_keypair()
    write_keypair(pair, tmp_path / "id")
    (tmp_path / "garbage").write_text("ssh-ed25519 AAAA-not-a-key\n")

    assert main(["fingerprint", str(tmp_path / "id")]) == 0
    assert capsys.readouterr().out.split()[0] == pair.fingerprint

    assert main(["fingerprint", str(tmp_path / "garbage")]) == 2
    assert_one_line_error(capsys.readouterr().err, "garbage:1: no public key found")


def test_cli_host_key_and_dev_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["host-key", str(tmp_path / "host_key")]) == 0
    assert "created" in capsys.readouterr().out
    assert main(["host-key", str(tmp_path / "host_key")]) == 0
    assert "existing" in capsys.readouterr().out

    assert main(["dev-ca", "--dir", str(tmp_path / "tls"), "--domain", "hostmux.localhost"]) == 0
    out = capsys.readouterr().out
    assert f"trust {tmp_path / 'tls' / 'dev-ca.pem'}" in out
    assert str(tmp_path / "tls" / "hostmux.localhost.pem") in out


def test_cli_dev_ca_defaults_to_the_routers_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))

    assert main(["dev-ca"]) == 0

    assert (tmp_path / "hostmux" / "tls" / "dev-ca.pem").is_file()
    assert "note: clients ignore the wildcard *.localhost" in capsys.readouterr().out
