"""Tunnel names and request hosts (``hostmux.names``): pure rules, exact answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostmux.names import (
    RESERVED_NAMES,
    HostTarget,
    InvalidName,
    check_name,
    is_dns_label,
    normalise_host,
    random_name,
    target_for_host,
)

# --- check_name / is_dns_label -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "0", "myapp", "my-app", "a--b", "xn--bcher-kva", "123", "a" * 63, "a" + "-" * 61 + "b"],
)
def test_check_name_accepts_lower_case_dns_labels(name: str) -> None:
    assert check_name(name) == name
    assert is_dns_label(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-a",
        "a-",
        "-",
        "MyApp",
        "my_app",
        "my.app",
        "my app",
        " myapp",
        "a" * 64,
        "café",
        "\uff4dyapp",  # full-width m: must not be folded into ASCII
    ],
)
def test_check_name_refuses_what_is_not_a_dns_label(name: str) -> None:
    with pytest.raises(InvalidName, match="is not a valid name"):
        check_name(name)
    assert not is_dns_label(name)


def test_check_name_error_quotes_the_name_and_states_the_rule() -> None:
    with pytest.raises(InvalidName) as caught:
        check_name("Bad_Name")
    assert str(caught.value) == (
        "'Bad_Name' is not a valid name: use 1-63 characters a-z, 0-9 and '-',"
        " not starting or ending with '-'"
    )


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES - {"_hostmux"}))
def test_check_name_refuses_reserved_names(name: str) -> None:
    with pytest.raises(InvalidName) as caught:
        check_name(name)
    assert str(caught.value) == f"{name!r} is reserved"


def test_reserved_names_cover_the_router_own_hosts() -> None:
    assert {"www", "admin", "router", "hostmux", "api", "localhost"} <= RESERVED_NAMES


def test_invalid_name_is_a_value_error() -> None:
    assert issubclass(InvalidName, ValueError)


@pytest.mark.parametrize("name", ["myapp\n", "admin\n"])
def test_check_name_refuses_a_trailing_newline(name: str) -> None:
    assert not is_dns_label(name)
    with pytest.raises(InvalidName):
        check_name(name)


# --- random_name -----------------------------------------------------------------------------


def test_random_name_is_a_claimable_12_character_label_without_look_alikes() -> None:
    for _ in range(200):
        name = random_name()
        assert len(name) == 12
        assert check_name(name) == name
        assert not set(name) & set("lo10")


def test_random_names_differ() -> None:
    assert len({random_name() for _ in range(100)}) == 100


# --- normalise_host ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("myapp.localhost", "myapp.localhost"),
        ("MyApp.LocalHost", "myapp.localhost"),
        ("myapp.localhost:8443", "myapp.localhost"),
        ("myapp.localhost.", "myapp.localhost"),
        ("myapp.localhost.:443", "myapp.localhost"),
        ("  myapp.localhost \t", "myapp.localhost"),
        ("myapp.localhost:0", "myapp.localhost"),
        ("myapp.localhost:65535", "myapp.localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("localhost", "localhost"),
    ],
)
def test_normalise_host_lower_cases_and_drops_port_and_one_trailing_dot(
    host: str, expected: str
) -> None:
    assert normalise_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "",
        "   ",
        ":8443",
        ".",
        "[::1]",
        "[::1]:8443",
        "::1",
        "user@myapp.localhost",
        "myapp.localhost:",
        "myapp.localhost:http",
        "myapp.localhost:123456",
        "myapp.localhost:-1",
        "myapp.localhost/path",
        "my app.localhost",
        "my_app.localhost",
        "café.localhost",
        "myapp.localhost\x00",
        "a:b:80",
    ],
)
def test_normalise_host_refuses_what_is_not_a_plain_host_name(host: str) -> None:
    assert normalise_host(host) is None


@pytest.mark.parametrize(
    "host",
    ["\xa0myapp.localhost", "\x85myapp.localhost", "\x1cmyapp.localhost", "myapp.localhost:\xb2"],
)
def test_normalise_host_refuses_non_ascii_whitespace_and_digits(host: str) -> None:
    # Each of these is a latin-1 byte h11 accepts in a Host value (obs-text or a
    # control character outside OWS), so it reaches normalise_host from a browser.
    assert normalise_host(host) is None


@given(st.text())
def test_normalise_host_never_raises_and_returns_lower_case_ascii_without_colon(
    host: str,
) -> None:
    result = normalise_host(host)
    if result is not None:
        assert result
        assert result.isascii()
        assert result == result.lower()
        assert ":" not in result


@given(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\.example\.com", fullmatch=True))
def test_normalise_host_keeps_plain_host_names(host: str) -> None:
    assert normalise_host(host) == host
    assert normalise_host(host.upper() + ".:443") == host


# --- target_for_host -----------------------------------------------------------------------


def test_target_for_the_domain_itself_is_the_router() -> None:
    assert target_for_host("example.com", "example.com") == HostTarget(label=None)


def test_target_for_one_label_under_the_domain_is_that_tunnel() -> None:
    assert target_for_host("myapp.example.com", "example.com") == HostTarget(label="myapp")


@pytest.mark.parametrize(
    "host",
    [
        "a.b.example.com",  # deeper names are not covered by the wildcard certificate
        "example.org",
        "evilexample.com",  # a suffix match without the dot is another domain
        "myapp.example.com.evil.net",
        ".example.com",
        "-bad.example.com",
        "com",
    ],
)
def test_target_for_foreign_or_deeper_hosts_is_none(host: str) -> None:
    assert target_for_host(host, "example.com") is None


def test_target_for_host_takes_the_label_after_normalising() -> None:
    host = normalise_host("MyApp.Example.com.:8443")
    assert host is not None
    assert target_for_host(host, "example.com") == HostTarget(label="myapp")
