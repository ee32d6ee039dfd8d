"""Declared ranges of numeric options (``hostmux.config.ranges``, ``hostmux.config.options``).

Every ``int``/``float`` option of every component declares its range where it
is declared; the walk below fails for one that does not, and tries every
option just outside its range through the component's own loader.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import authhelper._config
import listener._config
import router.config
from hostmux.config.layered import ConfigError, build_parser, load
from hostmux.config.options import Option, declared_options, option
from hostmux.config.ranges import OptionRange, format_number

Loader = Callable[[Sequence[str] | None, Mapping[str, str] | None], Any]


@dataclass(frozen=True)
class Component:
    name: str
    cls: type[Any]
    parser: Callable[[], argparse.ArgumentParser]
    load: Loader
    argv: tuple[str, ...]  # what the component needs besides the option under test


COMPONENTS = [
    Component(
        "router", router.config.RouterConfig, router.config.parser, router.config.load_config,
        (),
    ),
    Component(
        "listener", listener._config.ListenerConfig, listener._config.parser,
        listener._config.load_config, (),
    ),
    Component(
        "authhelper", authhelper._config.AuthHelperConfig, authhelper._config.parser,
        authhelper._config.load_config,
        ("--instance-id", "inst", "--portal-url", "https://portal.example", "--cookie-keys", "k"),
    ),
]  # fmt: skip


def just_outside(opt: Option) -> list[float]:
    """A value just below the range, and just above it when it has a maximum."""
    assert opt.value_range is not None
    value_range = opt.value_range
    step = 1 if opt.base is int else 0.5
    below = 0 if value_range.minimum == 0 and value_range.zero is None else None
    outside = [value_range.minimum - step if below is None else below]
    if value_range.maximum is not None:
        outside.append(value_range.maximum + step)
    return outside


def numeric_cases() -> list[Any]:
    cases = []
    for component in COMPONENTS:
        for opt in declared_options(component.cls):
            if opt.is_number:
                for value in just_outside(opt):
                    cases.append(pytest.param(component, opt, value, id=f"{opt.flag}={value}"))
    return cases


# --- the range on its own ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value_range", "described", "accepted", "refused"),
    [
        (OptionRange(0, 86_400, "off"), "0 = off; range 0..86400", [0, 1, 86_400], [-1, 86_401]),
        (OptionRange(1, 65_535), "range 1..65535", [1, 65_535], [0, -1, 65_536]),
        (OptionRange(0, 3600), "more than 0, at most 3600", [0.001, 3600], [0, -0.5, 3600.5]),
        (OptionRange(1), "at least 1", [1, 10**9], [0, 0.5]),
        (OptionRange(0), "more than 0", [0.1], [0, -1]),
    ],
)
def test_a_range_reads_and_checks_the_same_way(
    value_range: OptionRange, described: str, accepted: list[float], refused: list[float]
) -> None:
    assert value_range.describe() == described
    for value in accepted:
        assert value_range.error(value) is None
    for value in refused:
        assert value_range.error(value) == (
            f"{format_number(value)} is out of range: {value_range.bounds()}"
        )


def test_zero_cannot_have_a_meaning_when_it_is_below_the_minimum() -> None:
    with pytest.raises(ValueError, match="0 is never accepted"):
        OptionRange(1, 10, "off")


def test_a_default_outside_its_own_range_is_refused_where_declared() -> None:
    with pytest.raises(ValueError, match="outside its own range"):
        option(0, "a count", minimum=1)


def test_a_number_without_a_range_cannot_be_declared() -> None:
    @dataclass(frozen=True)
    class Forgetful:
        retries: int = option(3, "no range declared")

    with pytest.raises(TypeError, match=r"Forgetful\.retries: a number needs minimum"):
        declared_options(Forgetful)
    with pytest.raises(TypeError):
        build_parser(Forgetful, "forgetful", "")


def test_only_numbers_have_a_range() -> None:
    with pytest.raises(TypeError, match="only numbers have a range"):
        option("x", "a string", minimum=0, zero="empty")


# --- every option of every component -----------------------------------------------------


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.name)
def test_every_numeric_option_declares_a_range_its_default_is_in(component: Component) -> None:
    numeric = [opt for opt in declared_options(component.cls) if opt.is_number]
    assert numeric, "the walk must find the numeric options"
    for opt in numeric:
        assert opt.value_range is not None, opt.name
        assert opt.value_range.accepts(opt.default), opt.name


@pytest.mark.parametrize(("component", "opt", "value"), numeric_cases())
def test_every_numeric_option_out_of_range_is_one_line_naming_the_flag(
    component: Component, opt: Option, value: float
) -> None:
    assert opt.value_range is not None
    with pytest.raises(ConfigError) as caught:
        component.load([*component.argv, f"{opt.flag}={value}"], {})
    assert str(caught.value) == (
        f"{opt.flag}: {format_number(value)} is out of range: {opt.value_range.bounds()}"
    )


@pytest.mark.parametrize(("component", "opt", "value"), numeric_cases())
def test_every_numeric_option_out_of_range_in_the_environment_names_the_variable(
    component: Component, opt: Option, value: float
) -> None:
    with pytest.raises(ConfigError) as caught:
        component.load(list(component.argv), {opt.env: str(value)})
    assert str(caught.value).startswith(f"{opt.env}: {format_number(value)} is out of range: ")


def test_out_of_range_in_toml_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text("name_reservation_s = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        router.config.load_config(["--config", str(path)], {})
    assert str(caught.value) == (
        f"{path}: name_reservation_s: -1 is out of range: more than 0, at most 604800"
    )


def test_each_layer_is_checked_even_when_a_later_one_wins(tmp_path: Path) -> None:
    # A bad value in the file is a mistake to report, not one to hide behind a flag.
    path = tmp_path / "router.toml"
    path.write_text("portal_cache_ttl_s = -5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="portal_cache_ttl_s: -5 is out of range"):
        router.config.load_config(["--config", str(path), "--portal-cache-ttl-s", "5"], {})


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--name-reservation-s", "-1"),  # used to switch name-takeover protection off
        ("--name-reservation-s", "0"),
        ("--ssh-keepalive-interval-s", "-1"),  # used to crash at start with a traceback
        ("--portal-cache-ttl-s", "-1"),  # used to be accepted silently
        ("--portal-negative-cache-ttl-s", "-0.5"),
    ],
)
def test_the_issue_s_out_of_range_values_are_refused(flag: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag}: {value} is out of range: "):
        router.config.load_config([f"{flag}={value}"], {})


def test_the_edges_of_a_range_are_accepted() -> None:
    config = router.config.load_config(
        ["--portal-cache-ttl-s", "0", "--public-port", "65535", "--max-header-bytes", "1024",
         "--name-reservation-s", "604800"],
        {},
    )  # fmt: skip
    assert (config.portal_cache_ttl_s, config.public_port) == (0.0, 65_535)
    assert (config.max_header_bytes, config.name_reservation_s) == (1024, 604_800.0)


def test_a_config_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match=r"^name_reservation_s: -1 is out of range"):
        router.config.RouterConfig(name_reservation_s=-1)


# --- --help -------------------------------------------------------------------------------


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.name)
def test_help_shows_no_python_reprs(component: Component) -> None:
    text = " ".join(component.parser().format_help().split())
    for python_only in ("PosixPath(", "['", "[]", "None", "default: ''", ".0;"):
        assert python_only not in text


@pytest.mark.parametrize(
    "expected",
    [
        "--max-connections-per-ip N",
        "--max-tunnels-per-key N",
        "--max-requests-per-connection N",
        "--ssh-auth-failures-per-minute N",
        "--name-reservation-s SECONDS",
        "--channel-window-bytes BYTES",
        "--state-dir DIR",
        "--tls-cert-file FILE",
        "--ssh-listen HOST:PORT",
        "--public-port PORT",
        "(env HOSTMUX_NAME_RESERVATION_S; default: 600; more than 0, at most 604800)",
        "(env HOSTMUX_PORTAL_CACHE_TTL_S; default: 60; 0 = no caching: every login asks the "
        "portal; range 0..86400)",
        "default: 127.0.0.1:2222; repeat for several, '' for none",
    ],
)
def test_router_help_says_what_each_value_is(expected: str) -> None:
    assert expected in " ".join(router.config.parser().format_help().split())


def test_a_switch_has_no_metavar() -> None:
    text = " ".join(listener._config.parser().format_help().split())
    assert "--check-url, --no-check-url check that the public URL" in text
    assert "(env HOSTMUX_CHECK_URL; default: true)" in text


def test_listener_and_authhelper_help_say_what_each_value_is() -> None:
    text = " ".join(listener._config.parser().format_help().split())
    for expected in ("--router HOST:PORT", "--keepalive-interval-s SECONDS", "--target HOST:PORT",
                     "--identity-file FILE", "default: ~/.ssh/id_ed25519"):  # fmt: skip
        assert expected in text
    text = " ".join(authhelper._config.parser().format_help().split())
    for expected in ("--session-lifetime-s SECONDS", "--listen HOST:PORT",
                     "default: 28800; range 60..2592000"):  # fmt: skip
        assert expected in text


def test_a_number_loads_through_the_layers_untouched() -> None:
    @dataclass(frozen=True)
    class Sample:
        ratio: float = option(0.5, "a ratio", minimum=0, maximum=1, zero="never")

    args = build_parser(Sample, "sample", "").parse_args(["--ratio", "1"])
    assert load(Sample, args, {}).ratio == 1.0
