"""Client certificate routes and TLS passthrough names: parsing, the gateway's refusals, headers."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hostmux.config.layered import ConfigError
from hostmux.http1 import ClientInfo, Request
from hostmux.http1.headers import ClientCertificate
from hostmux.http1.pages import Page
from hostmux.relay import ByteStream, Destination
from router.client_certs import (
    ClientCertRoute,
    ClientCertRoutes,
    certificate_headers,
    check_route_files,
    parse_client_cert_routes,
)
from router.config import RouterConfig
from router.tunnels import Tunnel, TunnelGateway, TunnelHub


def _certificate(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


# --- parsing ------------------------------------------------------------------------


def test_routes_parse_globs_lists_and_defaults() -> None:
    routes = parse_client_cert_routes(
        [
            {"names": "Lab-*", "ca_file": "/etc/ca.pem"},
            {"names": ["a", "b-*"], "ca_file": "ca2.pem", "crl_file": "x.crl",
             "required_at_handshake": True},
        ]
    )  # fmt: skip
    assert routes == [
        ClientCertRoute(("lab-*",), Path("/etc/ca.pem")),
        ClientCertRoute(("a", "b-*"), Path("ca2.pem"), Path("x.crl"), True),
    ]
    assert routes[0].matches("lab-1") and not routes[0].matches("xlab-1")
    assert routes[1].matches("a") and routes[1].matches("b-2") and not routes[1].matches("ab")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"ca_file": "x"}, "client_cert_routes #1: needs names"),
        ({"names": "a"}, "client_cert_routes #1: needs ca_file"),
        ({"names": "a", "ca_file": "x", "cafile": "y"}, "unknown keys: cafile"),
        ({"names": [], "ca_file": "x"}, "names is a glob or a list of globs"),
        ({"names": [3], "ca_file": "x"}, "names is a glob or a list of globs"),
        ({"names": "a", "ca_file": ""}, "ca_file is a path"),
        ({"names": "a", "ca_file": "x", "crl_file": 1}, "crl_file is a path"),
        ({"names": "a", "ca_file": "x", "required_at_handshake": "yes"}, "true or false"),
    ],
)
def test_bad_route_tables_are_refused_in_words(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_client_cert_routes([table])


def test_router_config_checks_the_routes_and_allows_passthrough_with_a_registry() -> None:
    with pytest.raises(ValueError, match="client_cert_routes #1: needs ca_file"):
        RouterConfig(client_cert_routes=[{"names": "a"}])
    assert RouterConfig(tls_passthrough=True, registry="redis://127.0.0.1:6379/0").registry
    with pytest.raises(ValueError, match="need an https_listen or one_port_listen"):
        RouterConfig(tls_passthrough=True, https_listen=[])
    assert RouterConfig(tls_passthrough=True).tls_passthrough


def test_route_files_are_checked_with_their_name(tmp_path: Path) -> None:
    missing = ClientCertRoute(("a",), tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"ca_file .*nope\.pem: No such file"):
        check_route_files([missing])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"ca_file .*junk\.pem: no PEM certificate"):
        check_route_files([ClientCertRoute(("a",), junk)])
    certificate, _ = _certificate("ca")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match=r"crl_file .*junk\.pem: not a PEM CRL"):
        check_route_files([ClientCertRoute(("a",), ca, junk)])
    check_route_files([ClientCertRoute(("a",), ca)])


# --- headers ------------------------------------------------------------------------


def test_certificate_headers_follow_rfc_9440_and_escape_the_subject() -> None:
    certificate, _ = _certificate('Zoë, "lab"\n')
    der = certificate.public_bytes(serialization.Encoding.DER)
    headers = dict(certificate_headers(der))
    assert headers[b"client-cert"].startswith(b":") and headers[b"client-cert"].endswith(b":")
    assert headers[b"x-client-cert-fingerprint"] == hashlib.sha256(der).hexdigest().encode()
    subject = headers[b"x-client-cert-subject"]
    assert subject == b'CN=Zo\\C3\\AB\\, \\"lab\\"\\0A'
    assert all(0x20 <= byte < 0x7F for byte in subject)
    assert b"client-cert-chain" not in headers  # no connection: no verified chain to tell


# --- the gateway --------------------------------------------------------------------


async def _never(_ip: str, _port: int) -> ByteStream:
    raise AssertionError("not opened in these tests")


def _gateway(tmp_path: Path) -> tuple[TunnelHub, TunnelGateway]:
    certificate, _ = _certificate("ca")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    hub = TunnelHub(domain="example.org", scheme="https", public_port=443, reservation_s=60)
    gateway = TunnelGateway(hub)
    gateway.client_certs = ClientCertRoutes(
        [ClientCertRoute(("lab-*",), ca), ClientCertRoute(("strict-*",), ca)]
    )
    for name, passthrough in (("lab-1", False), ("strict-1", False), ("open", False),
                              ("pt", True)):  # fmt: skip
        hub.claim(Tunnel(name, "owner", "peer", _never, passthrough=passthrough))
    return hub, gateway


def _route(gateway: TunnelGateway, host: str, client: ClientInfo) -> Destination | Page:
    request = Request(b"GET", b"/", [(b"host", host.encode())])
    routed = gateway.route(host, request, "rid", client)
    assert isinstance(routed, (Destination, Page))
    return routed


def test_gateway_serves_a_route_only_to_its_own_verified_certificates(tmp_path: Path) -> None:
    _, gateway = _gateway(tmp_path)
    bare = ClientInfo("192.0.2.1", 1, "https")
    lab = ClientInfo("192.0.2.1", 1, "https", ClientCertificate("lab-*", ()))
    refused = _route(gateway, "lab-1.example.org", bare)
    assert isinstance(refused, Page) and refused.status == 403
    assert b"needs a client certificate" in refused.body
    assert isinstance(_route(gateway, "lab-1.example.org", lab), Destination)
    # Verified by another route: not this one's.
    other = _route(gateway, "strict-1.example.org", lab)
    assert isinstance(other, Page) and other.status == 403
    # A name under no route takes anyone.
    assert isinstance(_route(gateway, "open.example.org", bare), Destination)
    # Plain HTTP never has a certificate.
    plain = _route(gateway, "lab-1.example.org", ClientInfo("192.0.2.1", 1, "http"))
    assert isinstance(plain, Page) and plain.status == 403


def test_gateway_never_serves_a_passthrough_tunnel_as_http(tmp_path: Path) -> None:
    hub, gateway = _gateway(tmp_path)
    for scheme in ("https", "http"):
        page = _route(gateway, "pt.example.org", ClientInfo("192.0.2.1", 1, scheme))
        assert isinstance(page, Page) and page.status == 421
        assert b"TLS passthrough" in page.body
    passthrough = hub.passthrough_for("pt.example.org")
    assert passthrough is not None and passthrough.name == "pt"
    assert hub.passthrough_for("open.example.org") is None  # an HTTP name
    assert hub.passthrough_for("pt.example.com") is None  # not our domain
    assert hub.passthrough_for("example.org") is None
    assert hub.passthrough_for(None) is None
