"""The ACME options: what goes together, and the one line each wrong combination gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import RouterConfig

URL = "https://acme.example/directory"


def test_acme_is_off_by_default_and_its_options_need_the_directory() -> None:
    assert RouterConfig().acme_directory_url == ""
    with pytest.raises(ValueError, match="acme_email needs acme_directory_url"):
        RouterConfig(acme_email="ops@example.org")
    with pytest.raises(ValueError, match="acme_dns_hook needs acme_directory_url"):
        RouterConfig(acme_dns_hook="/bin/true")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"acme_directory_url": "ftp://x"}, "acme_directory_url: an http"),
        ({"acme_challenge": "dns-02"}, "acme_challenge: 'dns-02' is not"),
        ({"acme_challenge": "tls-alpn-01", "acme_dns_zone": "x"}, "is for acme_challenge dns-01"),
        ({}, "dns-01 needs acme_dns_server or acme_dns_hook"),
        ({"acme_dns_server": "127.0.0.1", "acme_dns_hook": "x"}, "(one)"),
        ({"acme_dns_hook": "x", "acme_dns_zone": "localhost"}, "go with acme_dns_server"),
        ({"acme_dns_server": "dns.example"}, "is not IP"),
        ({"acme_dns_server": "127.0.0.1:0"}, "is not IP"),
        ({"acme_dns_server": "127.0.0.1", "acme_dns_zone": "example.org"}, "does not hold"),
        ({"acme_challenge": "http-01", "acme_dns_server": "127.0.0.1"}, "is for acme_challenge"),
        ({"acme_challenge": "http-01", "http_listen": []}, "http-01 needs http_listen"),
        ({"acme_challenge": "http-01", "https_listen": []}, "need an HTTPS front door"),
        ({"acme_challenge": "http-01", "workers": 2}, "workers need a registry"),
        (
            {"acme_challenge": "http-01", "tls_cert_file": Path("c"), "tls_key_file": Path("k")},
            "choose one",
        ),
    ],
)
def test_wrong_combinations_are_one_line(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RouterConfig(acme_directory_url=options.pop("acme_directory_url", URL), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_http01_and_tls_alpn01_go_with_workers_sharing_a_registry(challenge: str) -> None:
    config = RouterConfig(
        acme_directory_url=URL, acme_challenge=challenge, workers=2, registry="redis://r"
    )
    assert (config.workers, config.acme_challenge) == (2, challenge)


@pytest.mark.parametrize(
    ("server", "address"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5300", ("::1", 5300)),
    ],
)
def test_the_dns_server_is_an_ip_with_an_optional_port(
    server: str, address: tuple[str, int]
) -> None:
    config = RouterConfig(acme_directory_url=URL, acme_dns_server=server, domain="example.org")
    assert config.acme_dns_address == address


def test_working_setups() -> None:
    http = RouterConfig(acme_directory_url=URL, acme_challenge="http-01", acme_email="a@b.c")
    assert http.acme_challenge == "http-01"
    dns = RouterConfig(
        acme_directory_url=URL, domain="t.example.org", acme_dns_server="127.0.0.1:53",
        acme_dns_zone="example.org.",
    )  # fmt: skip
    assert dns.acme_dns_zone == "example.org."
    workers = RouterConfig(
        acme_directory_url=URL, acme_dns_hook="/bin/true", workers=2, registry="redis://r"
    )
    assert workers.workers == 2  # the first worker orders, the others follow
