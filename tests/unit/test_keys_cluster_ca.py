"""The cluster CA and the router-to-router TLS link, over real TLS on loopback.

Handshakes are real: a server thread and a client on a loopback socket (port
0), each side with a socket timeout, so a hang fails the test instead of the
suite. An outsider is built with plain ``ssl`` (it has our public ``ca.crt``,
never our CA key), since an attacker does not use our API.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from keys import (
    ClusterCA,
    KeyFileError,
    KeysError,
    RouterCertFiles,
    check_router_id,
    cluster_tls_contexts,
    issue_leaf_certificate,
    peer_router_id,
)
from keys._certificates import BACKDATE, leaf_builder, load_ca, write_leaf
from keys._cli import main

from . import asyncio_bounded

# OpenSSL's verify codes (x509_vfy.h); their texts differ between OpenSSL versions.
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_INVALID_PURPOSE = 26
X509_V_ERR_HOSTNAME_MISMATCH = 62

# Every blocking socket call in a handshake gives up after this: a hang fails fast.
DEADLINE_S = 10.0

ROOT = Path(__file__).resolve().parents[2]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> ClusterCA:
    # One CA for the module: key generation is cheap, but the files are shared read-only.
    return ClusterCA.init(tmp_path_factory.mktemp("cluster") / "ca")


@pytest.fixture(scope="module")
def router_a(cluster: ClusterCA, tmp_path_factory: pytest.TempPathFactory) -> RouterCertFiles:
    return cluster.issue("router-a", tmp_path_factory.mktemp("a"))


@pytest.fixture(scope="module")
def router_b(cluster: ClusterCA, tmp_path_factory: pytest.TempPathFactory) -> RouterCertFiles:
    return cluster.issue("router-b.1", tmp_path_factory.mktemp("b"))


def contexts(cluster: ClusterCA, router: RouterCertFiles) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return cluster_tls_contexts(cluster.ca_file, router.cert, router.key)


def outsider(
    purpose: ssl._SSLMethod, ca_file: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A context that trusts ``ca_file`` and shows ``cert`` (or none), built without our API."""
    context = ssl.SSLContext(purpose)
    context.load_verify_locations(cafile=ca_file)
    if cert is not None:
        context.load_cert_chain(cert, key)
    if purpose == ssl.PROTOCOL_TLS_SERVER:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class End:
    """What one end of a connection saw: the peer's router id, its greeting, or an error."""

    peer_id: str | None = None
    received: bytes = b""
    error: BaseException | None = None


def exchange(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str
) -> tuple[End, End]:
    """Handshake over loopback, then each side reads the other's id and one greeting."""
    server, client = End(), End()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(DEADLINE_S)

        def serve() -> None:
            try:
                connection, _ = listener.accept()
                connection.settimeout(DEADLINE_S)
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    server.peer_id = peer_router_id(tls)
                    tls.sendall(b"from server")
                    server.received = tls.recv(64)
            except (OSError, KeysError) as error:  # ssl.SSLError is an OSError
                server.error = error

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=DEADLINE_S) as raw,
                client_context.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                client.peer_id = peer_router_id(tls)
                client.received = tls.recv(64)
                tls.sendall(b"from client")
        except (OSError, KeysError) as error:
            client.error = error
        thread.join(DEADLINE_S)
        assert not thread.is_alive()
    return server, client


def verify_code(error: BaseException | None) -> int:
    assert isinstance(error, ssl.SSLCertVerificationError), repr(error)
    return error.verify_code


# --- the handshake -------------------------------------------------------------------------


def test_two_routers_of_one_cluster_authenticate_each_other(
    cluster: ClusterCA, router_a: RouterCertFiles, router_b: RouterCertFiles
) -> None:
    server_context, _ = contexts(cluster, router_a)
    _, client_context = contexts(cluster, router_b)

    server, client = exchange(server_context, client_context, "router-a")

    assert (server.error, client.error) == (None, None)
    assert (server.peer_id, client.peer_id) == ("router-b.1", "router-a")
    assert (server.received, client.received) == (b"from client", b"from server")


def test_asyncio_streams_see_each_others_router_id(
    cluster: ClusterCA, router_a: RouterCertFiles, router_b: RouterCertFiles
) -> None:
    # The router is asyncio: there the peer is an ssl.SSLObject, not an SSLSocket.
    server_context, _ = contexts(cluster, router_a)
    _, client_context = contexts(cluster, router_b)

    async def scenario() -> tuple[str, str]:
        seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(peer_router_id(writer.get_extra_info("ssl_object")))
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname="router-a"
            )
            client_saw = peer_router_id(writer.get_extra_info("ssl_object"))
            server_saw = await seen
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        return server_saw, client_saw

    assert asyncio_bounded.run(scenario()) == ("router-b.1", "router-a")


def test_a_client_without_a_certificate_is_refused(
    cluster: ClusterCA, router_a: RouterCertFiles
) -> None:
    server_context, _ = contexts(cluster, router_a)

    server, client = exchange(
        server_context, outsider(ssl.PROTOCOL_TLS_CLIENT, cluster.ca_file), "router-a"
    )

    assert isinstance(server.error, ssl.SSLError)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(server.error)
    assert server.received == b"" and client.received == b""
    assert isinstance(client.error, OSError)


def test_a_client_certificate_from_another_ca_is_refused(
    cluster: ClusterCA, router_a: RouterCertFiles, tmp_path: Path
) -> None:
    other = ClusterCA.init(tmp_path / "other-ca").issue("router-b", tmp_path)
    server_context, _ = contexts(cluster, router_a)
    client_context = outsider(ssl.PROTOCOL_TLS_CLIENT, cluster.ca_file, other.cert, other.key)

    server, client = exchange(server_context, client_context, "router-a")

    assert verify_code(server.error) == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    assert server.peer_id is None and client.received == b""
    assert isinstance(client.error, OSError)


def test_a_server_only_certificate_is_refused_as_a_client(
    cluster: ClusterCA, router_a: RouterCertFiles, tmp_path: Path
) -> None:
    # Signed by the right CA, but for serverAuth only (the dev CA's kind of leaf).
    cert, key = tmp_path / "b.crt", tmp_path / "b.key"
    issue_leaf_certificate(cluster.ca_file, cluster.directory / "ca.key", ["router-b"], cert, key)
    server_context, _ = contexts(cluster, router_a)
    client_context = outsider(ssl.PROTOCOL_TLS_CLIENT, cluster.ca_file, cert, key)

    server, client = exchange(server_context, client_context, "router-a")

    assert verify_code(server.error) == X509_V_ERR_INVALID_PURPOSE
    assert server.peer_id is None and client.received == b""


def test_an_expired_client_certificate_is_refused(
    cluster: ClusterCA, router_a: RouterCertFiles, tmp_path: Path
) -> None:
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = cluster.issue("router-b", tmp_path, valid_from=long_ago, valid_for=_one_day())
    server_context, _ = contexts(cluster, router_a)
    client_context = outsider(ssl.PROTOCOL_TLS_CLIENT, cluster.ca_file, expired.cert, expired.key)

    server, client = exchange(server_context, client_context, "router-a")

    assert verify_code(server.error) == X509_V_ERR_CERT_HAS_EXPIRED
    assert server.peer_id is None and client.received == b""


@pytest.mark.parametrize("fault", ["another CA", "expired", "client only"])
def test_the_client_refuses_a_server_that_is_not_a_member(
    cluster: ClusterCA, router_b: RouterCertFiles, tmp_path: Path, fault: str
) -> None:
    if fault == "another CA":
        bad = ClusterCA.init(tmp_path / "other-ca").issue("router-a", tmp_path)
        expected = X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    elif fault == "expired":
        long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        bad = cluster.issue("router-a", tmp_path, valid_from=long_ago, valid_for=_one_day())
        expected = X509_V_ERR_CERT_HAS_EXPIRED
    else:
        bad = _client_only(cluster, "router-a", tmp_path)
        expected = X509_V_ERR_INVALID_PURPOSE
    _, client_context = contexts(cluster, router_b)
    server_context = outsider(ssl.PROTOCOL_TLS_SERVER, cluster.ca_file, bad.cert, bad.key)

    server, client = exchange(server_context, client_context, "router-a")

    assert verify_code(client.error) == expected
    assert client.peer_id is None and server.received == b""


def test_the_client_refuses_a_member_answering_for_another_router(
    cluster: ClusterCA, router_a: RouterCertFiles, router_b: RouterCertFiles
) -> None:
    # router-a's certificate is valid, but the client meant to reach router-c.
    server_context, _ = contexts(cluster, router_a)
    _, client_context = contexts(cluster, router_b)

    server, client = exchange(server_context, client_context, "router-c")

    assert verify_code(client.error) == X509_V_ERR_HOSTNAME_MISMATCH
    assert server.received == b""


# --- the contexts and the files --------------------------------------------------------------


def test_contexts_trust_only_the_cluster_ca_and_require_tls_1_2(
    cluster: ClusterCA, router_a: RouterCertFiles
) -> None:
    server_context, client_context = contexts(cluster, router_a)

    for context in (server_context, client_context):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
        # No system trust store: the one CA is the cluster's.
        ca_der = cluster.certificate.public_bytes(serialization.Encoding.DER)
        assert context.get_ca_certs(binary_form=True) == [ca_der]
    assert client_context.check_hostname
    assert not server_context.check_hostname


def test_contexts_refuse_files_that_cannot_make_a_member(
    cluster: ClusterCA, router_a: RouterCertFiles, router_b: RouterCertFiles, tmp_path: Path
) -> None:
    other = ClusterCA.init(tmp_path / "other-ca").issue("router-x", tmp_path / "x")
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = cluster.issue("router-e", tmp_path / "e", valid_from=long_ago, valid_for=_one_day())
    server_only = tmp_path / "s.crt", tmp_path / "s.key"
    issue_leaf_certificate(cluster.ca_file, cluster.directory / "ca.key", ["s"], *server_only)
    cases = [
        ((cluster.ca_file, other.cert, other.key), "is not signed by the cluster CA"),
        ((cluster.ca_file, expired.cert, expired.key), "expired on"),
        ((cluster.ca_file, *server_only), "not for both serverAuth and clientAuth"),
        ((cluster.ca_file, router_a.cert, router_b.key), "is not the key of"),
        ((cluster.ca_file, tmp_path / "missing.crt", router_a.key), "cannot read certificate"),
        ((tmp_path / "missing-ca.crt", router_a.cert, router_a.key), "cannot read certificate"),
    ]
    for files, fragment in cases:
        with pytest.raises(KeyFileError, match=fragment) as caught:
            cluster_tls_contexts(*files)
        assert "\n" not in str(caught.value)


def test_peer_router_id_needs_a_verified_certificate(
    cluster: ClusterCA, router_a: RouterCertFiles
) -> None:
    # A client that verifies nothing gets {} from getpeercert(): no router id to read.
    server_context, _ = contexts(cluster, router_a)
    blind = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    blind.check_hostname = False
    blind.verify_mode = ssl.CERT_NONE

    _, client = exchange(server_context, blind, "router-a")

    assert isinstance(client.error, KeysError)
    assert "no verified certificate" in str(client.error)


# --- the CA and its certificates -------------------------------------------------------------


def test_cluster_ca_and_router_certificate_have_the_promised_shape(tmp_path: Path) -> None:
    ca = ClusterCA.init(tmp_path / "ca")
    files = ca.issue("router-a.2")

    certificate = x509.load_pem_x509_certificate((tmp_path / "ca/ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days == 3650
    assert certificate.subject.rfc4514_string().startswith("CN=hostmux cluster CA ")
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert files.cert == tmp_path / "ca/router-a.2.crt"
    assert files.key == tmp_path / "ca/router-a.2.key"
    leaf.verify_directly_issued_by(certificate)
    assert san.get_values_for_type(x509.DNSName) == ["router-a.2"]
    assert list(san) == [x509.DNSName("router-a.2")]
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == 365
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode_of(tmp_path / "ca/ca.key") == 0o600 and mode_of(files.key) == 0o600
    assert mode_of(tmp_path / "ca/ca.crt") == 0o644 and mode_of(files.cert) == 0o644
    assert mode_of(tmp_path / "ca") == 0o700


def test_init_refuses_to_replace_a_ca_unless_forced(tmp_path: Path) -> None:
    ClusterCA.init(tmp_path)
    key_before = (tmp_path / "ca.key").read_bytes()

    with pytest.raises(KeyFileError, match=r"ca\.key already exists"):
        ClusterCA.init(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == key_before
    ClusterCA.init(tmp_path, force=True)
    assert (tmp_path / "ca.key").read_bytes() != key_before


def test_a_certificate_may_not_outlive_its_ca(cluster: ClusterCA, tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="would outlive the cluster CA"):
        cluster.issue("router-a", tmp_path, valid_for=datetime.timedelta(days=3651))
    with pytest.raises(KeysError, match="valid for some time"):
        cluster.issue("router-a", tmp_path, valid_for=datetime.timedelta(0))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("router_id", ["a", "router-a", "router-a.1", "r1.eu-west", "7"])
def test_router_ids_that_are_accepted(router_id: str) -> None:
    assert check_router_id(router_id) == router_id


@pytest.mark.parametrize(
    "router_id",
    ["", "Router-A", "a/b", "../a", ".a", "a.", "-a", "a_b", "a b", "a" * 64, "10.0.0.1", "::1"],
)
def test_router_ids_that_are_refused(router_id: str, tmp_path: Path, cluster: ClusterCA) -> None:
    with pytest.raises(KeysError, match="router id") as caught:
        cluster.issue(router_id, tmp_path)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# --- the command line ------------------------------------------------------------------------


def assert_one_line_error(stderr: str, fragment: str) -> None:
    assert stderr.startswith("hostmux-keys: error: ")
    assert stderr.count("\n") == 1
    assert fragment in stderr
    assert "Traceback" not in stderr


def test_cli_init_then_refuse_then_issue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "routers"

    assert main(["cluster-ca", "init", str(ca_dir)]) == 0
    assert f"{ca_dir / 'ca.crt'}" in capsys.readouterr().out
    key_before = (ca_dir / "ca.key").read_bytes()
    assert main(["cluster-ca", "init", str(ca_dir)]) == 2
    refused = capsys.readouterr()
    assert_one_line_error(refused.err, "already exists; not replaced (--force")
    assert (ca_dir / "ca.key").read_bytes() == key_before

    assert main(["cluster-ca", "issue", str(ca_dir), "router-a", "--out", str(out)]) == 0
    assert "router router-a, valid until" in capsys.readouterr().out
    assert mode_of(out / "router-a.key") == 0o600 and mode_of(out / "router-a.crt") == 0o644
    assert main(["cluster-ca", "issue", "--days", "30", str(ca_dir), "router-b"]) == 0
    leaf = x509.load_pem_x509_certificate((ca_dir / "router-b.crt").read_bytes())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == 30
    a_server, _ = cluster_tls_contexts(
        ca_dir / "ca.crt", out / "router-a.crt", out / "router-a.key"
    )
    _, b_client = cluster_tls_contexts(
        ca_dir / "ca.crt", ca_dir / "router-b.crt", ca_dir / "router-b.key"
    )
    server, client = exchange(a_server, b_client, "router-a")
    assert (server.peer_id, client.peer_id) == ("router-b", "router-a")

    assert main(["cluster-ca", "init", "--force", str(ca_dir)]) == 0
    assert (ca_dir / "ca.key").read_bytes() != key_before


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["issue", "{ca}", "Router/A"], "router id 'Router/A' is not valid"),
        (["issue", "{ca}", "10.0.0.1"], "is an IP address"),
        (["issue", "{missing}", "router-a"], "no cluster CA directory"),
        (["issue", "{empty}", "router-a"], "cannot read certificate"),
        (["issue", "--days", "0", "{ca}", "router-a"], "--days must be 1..3650"),
        (["issue", "--days", "x", "{ca}", "router-a"], "invalid int value"),
        (["issue", "{ca}"], "required: ROUTER_ID"),
        (["frob", "{ca}"], "invalid choice"),
    ],
)
def test_cli_errors_are_one_line(
    cluster: ClusterCA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # any file a wrong argument might create lands here
    (tmp_path / "empty").mkdir()
    paths = {
        "ca": str(cluster.directory),
        "missing": str(tmp_path / "missing"),
        "empty": str(tmp_path / "empty"),
    }
    before = sorted(cluster.directory.iterdir())

    assert main(["cluster-ca", *(arg.format(**paths) for arg in argv)]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, fragment)
    assert captured.out == ""
    assert sorted(cluster.directory.iterdir()) == before


def test_cli_as_a_process_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keys", "cluster-ca", "issue", str(tmp_path / "nope"), "a"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_line_error(result.stderr, f"no cluster CA directory {tmp_path / 'nope'}")


def _one_day() -> datetime.timedelta:
    return datetime.timedelta(days=1)


def _client_only(cluster: ClusterCA, router_id: str, directory: Path) -> RouterCertFiles:
    """A certificate from the cluster CA for clientAuth only, built by hand (the API won't)."""
    ca_cert, ca_key = load_ca(cluster.ca_file, cluster.directory / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    later = now + _one_day()
    certificate = (
        leaf_builder(router_id, key, ca_cert, ca_key, now - BACKDATE, later)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(router_id)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = RouterCertFiles(router_id, directory / "c.crt", directory / "c.key", later)
    write_leaf(files.key, key, files.cert, certificate)
    return files
