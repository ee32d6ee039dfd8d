"""Layered configuration (``hostmux.config.layered`` and ``router.config``).

defaults < TOML < ``HOSTMUX_*`` environment < flags. The environment is always
passed explicitly, so the tests never read or change ``os.environ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hostmux.config.layered import (
    ConfigError,
    build_parser,
    load,
    option,
    parse_host_port,
)
from hostmux.relay import RelayLimits
from router.config import RouterConfig, load_config


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(argv: list[str], environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(argv, environ)
    return str(caught.value)


# --- the layers --------------------------------------------------------------------------


def test_no_configuration_gives_the_defaults() -> None:
    config = load_config([], {})
    assert config == RouterConfig()
    assert config.domain == "localhost"
    assert config.ssh_listen == ["127.0.0.1:2222"]
    assert config.https_listen == ["127.0.0.1:8443"]
    assert config.http_listen == ["127.0.0.1:8080"]
    assert config.header_timeout_s == 60.0
    assert config.max_header_bytes == 32 * 1024


def test_toml_beats_defaults(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'domain = "toml.example"\n'
        "header_timeout_s = 5\n"
        'ssh_listen = ["0.0.0.0:22", "[::]:22"]\n'
        'state-dir = "/var/lib/hostmux"\n',
    )
    config = load_config(["--config", str(path)], {})
    assert config.domain == "toml.example"
    assert config.header_timeout_s == 5.0
    assert isinstance(config.header_timeout_s, float)
    assert config.ssh_listen == ["0.0.0.0:22", "[::]:22"]
    assert config.state_dir == Path("/var/lib/hostmux")
    assert config.keepalive_timeout_s == 75.0  # untouched: still the default


def test_env_beats_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'domain = "toml.example"\nheader_timeout_s = 5\n')
    config = load_config(
        ["--config", str(path)], {"HOSTMUX_DOMAIN": "env.example", "HOSTMUX_LOG_LEVEL": "debug"}
    )
    assert config.domain == "env.example"
    assert config.header_timeout_s == 5.0
    assert config.log_level == "debug"


def test_flags_beat_env_and_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'domain = "toml.example"\nmax_header_bytes = 1500\n')
    config = load_config(
        ["--config", str(path), "--domain", "flag.example", "--max-header-bytes", "4096"],
        {"HOSTMUX_DOMAIN": "env.example", "HOSTMUX_MAX_HEADER_BYTES": "2048"},
    )
    assert config.domain == "flag.example"
    assert config.max_header_bytes == 4096


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'domain = "toml.example"\n')
    assert load_config([], {"HOSTMUX_CONFIG": str(path)}).domain == "toml.example"


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    chosen = write_toml(tmp_path, 'domain = "chosen.example"\n')
    ignored = tmp_path / "ignored.toml"
    ignored.write_text('domain = "ignored.example"\n', encoding="utf-8")
    config = load_config(["--config", str(chosen)], {"HOSTMUX_CONFIG": str(ignored)})
    assert config.domain == "chosen.example"


def test_unrelated_environment_is_ignored() -> None:
    config = load_config([], {"HOSTMUX_NOT_AN_OPTION": "x", "DOMAIN": "nope.example"})
    assert config == RouterConfig()


# --- lists -----------------------------------------------------------------------------


def test_list_from_env_is_comma_separated_and_trimmed() -> None:
    config = load_config([], {"HOSTMUX_HTTPS_LISTEN": " 127.0.0.1:1 ,[::1]:2,, :3 "})
    assert config.https_listen == ["127.0.0.1:1", "[::1]:2", ":3"]


def test_empty_list_from_env_turns_the_plain_http_door_off() -> None:
    assert load_config([], {"HOSTMUX_HTTP_LISTEN": ""}).http_listen == []


@pytest.mark.parametrize(
    "argv", [["--http-listen", ""], ["--http-listen="], ["--http-listen", " "]]
)
def test_empty_flag_turns_the_plain_http_door_off(argv: list[str]) -> None:
    # The help says '' means none; it used to be refused as a bad HOST:PORT.
    config = load_config(argv, {"HOSTMUX_HTTP_LISTEN": "127.0.0.1:1"})
    assert config.http_listen == []


def test_list_flags_repeat_and_replace_lower_layers() -> None:
    config = load_config(
        ["--ssh-listen", "0.0.0.0:22", "--ssh-listen", "[::]:22"],
        {"HOSTMUX_SSH_LISTEN": "127.0.0.1:2022"},
    )
    assert config.ssh_listen == ["0.0.0.0:22", "[::]:22"]


def test_list_defaults_are_not_shared_between_instances() -> None:
    first, second = RouterConfig(), RouterConfig()
    first.ssh_listen.append("0.0.0.0:1")
    assert second.ssh_listen == ["127.0.0.1:2222"]


# --- errors name the option --------------------------------------------------------------


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'colour = "blue"\n')
    assert config_error(["--config", str(path)], {}) == f"{path}: unknown option 'colour'"


def test_toml_table_is_an_unknown_option(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[router]\ndomain = "x.example"\n')
    assert config_error(["--config", str(path)], {}) == f"{path}: unknown option 'router'"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('header_timeout_s = "soon"', "header_timeout_s: expected a finite number, got 'soon'"),
        ('max_header_bytes = "big"', "max_header_bytes: expected an integer, got 'big'"),
        ("max_header_bytes = true", "max_header_bytes: expected an integer, got True"),
        ("domain = 5", "domain: expected a string, got 5"),
        ("state_dir = 5", "state_dir: expected a path, got 5"),
        ("ssh_listen = [22]", "ssh_listen: expected a list of strings, got [22]"),
        ("ssh_listen = 22", "ssh_listen: expected a list of strings, got 22"),
    ],
)
def test_wrong_toml_types_name_file_and_option(tmp_path: Path, toml: str, message: str) -> None:
    path = write_toml(tmp_path, toml + "\n")
    assert config_error(["--config", str(path)], {}) == f"{path}: {message}"


def test_wrong_env_type_names_the_variable() -> None:
    assert config_error([], {"HOSTMUX_MAX_HEADER_BYTES": "1e3"}) == (
        "HOSTMUX_MAX_HEADER_BYTES: expected an integer, got '1e3'"
    )


def test_wrong_flag_type_names_the_flag() -> None:
    assert config_error(["--response-timeout-s", "soon"], {}) == (
        "--response-timeout-s: expected a finite number, got 'soon'"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nowhere", "ssh_listen: expected HOST:PORT, got 'nowhere'"),
        ("host:", "ssh_listen: expected HOST:PORT, got 'host:'"),
        ("host:ssh", "ssh_listen: expected HOST:PORT, got 'host:ssh'"),
        ("host:65536", "ssh_listen: expected HOST:PORT, got 'host:65536'"),
    ],
)
def test_bad_host_port_names_the_option(value: str, message: str) -> None:
    assert config_error(["--ssh-listen", value], {}) == message


def test_bad_host_port_in_env_list_names_the_option() -> None:
    message = config_error([], {"HOSTMUX_HTTPS_LISTEN": "127.0.0.1:8443,oops"})
    assert message == "https_listen: expected HOST:PORT, got 'oops'"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HOSTMUX_DOMAIN": "Bad_Domain"}, "domain: 'Bad_Domain' is not a valid lower-case"),
        ({"HOSTMUX_SSH_LISTEN": ""}, "ssh_listen: at least one address is needed"),
        (
            {"HOSTMUX_HTTPS_LISTEN": "", "HOSTMUX_HTTP_LISTEN": ""},
            "https_listen, http_listen, one_port_listen: at least one front door is needed",
        ),
        ({"HOSTMUX_TLS_CERT_FILE": "/x.pem"}, "tls_cert_file and tls_key_file go together"),
        (
            {"HOSTMUX_CHANNEL_WINDOW_BYTES": "1024"},
            "HOSTMUX_CHANNEL_WINDOW_BYTES: 1024 is out of range: 65536..1073741824",
        ),
        ({"HOSTMUX_LOG_LEVEL": "loud"}, "log_level: 'loud' is not debug, info"),
        (
            {"HOSTMUX_HEADER_TIMEOUT_S": "0"},
            "HOSTMUX_HEADER_TIMEOUT_S: 0 is out of range: more than 0, at most 3600",
        ),
        (
            {"HOSTMUX_SSH_LOGIN_TIMEOUT_S": "-1"},
            "HOSTMUX_SSH_LOGIN_TIMEOUT_S: -1 is out of range: more than 0, at most 3600",
        ),
        (
            {"HOSTMUX_ONE_PORT_LISTEN": "127.0.0.1:0", "HOSTMUX_HTTPS_LISTEN": ""},
            "one_port_listen needs TLS: an https_listen address",
        ),
        (
            {"HOSTMUX_PORTAL_KEYS_URL": "https://portal.example/keys"},
            "portal_keys_url: an http(s) URL template containing {id}",
        ),
        (
            {"HOSTMUX_EVENTS_URL": "https://portal.example/events"},
            "events_url needs events_secret",
        ),
    ],
)
def test_invalid_values_name_the_option(environ: dict[str, str], message: str) -> None:
    assert config_error([], environ).startswith(message)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert config_error(["--config", str(path)], {}) == f"{path}: no such config file"


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "domain = \n")
    assert config_error(["--config", str(path)], {}).startswith(f"{path}: invalid TOML: ")


def test_float_for_an_integer_option_is_an_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_header_bytes = 8192.9\n")
    assert config_error(["--config", str(path)], {}) == (
        f"{path}: max_header_bytes: expected an integer, got 8192.9"
    )


def test_nan_timeout_is_an_error() -> None:
    assert config_error([], {"HOSTMUX_HEADER_TIMEOUT_S": "nan"}) == (
        "HOSTMUX_HEADER_TIMEOUT_S: expected a finite number, got 'nan'"
    )


# --- derived values ------------------------------------------------------------------------


def test_relay_limits_carry_the_configured_values() -> None:
    config = load_config(
        ["--max-header-bytes", "1024", "--connect-timeout-s", "2.5"],
        {"HOSTMUX_WEBSOCKET_IDLE_TIMEOUT_S": "30"},
    )
    assert config.relay_limits == RelayLimits(
        max_header_bytes=1024, connect_timeout_s=2.5, websocket_idle_timeout_s=30.0
    )


def test_key_paths_default_into_the_state_dir() -> None:
    config = load_config(["--state-dir", "/srv/hostmux"], {})
    assert config.host_key_path == Path("/srv/hostmux/ssh_host_key")
    assert config.authorized_keys_path == Path("/srv/hostmux/authorized_keys")
    config = load_config([], {"HOSTMUX_HOST_KEY_FILE": "/etc/hostmux/key"})
    assert config.host_key_path == Path("/etc/hostmux/key")


def test_empty_optional_path_means_none() -> None:
    assert load_config([], {"HOSTMUX_HOST_KEY_FILE": ""}).host_key_file is None


# --- the layering machinery on its own: every supported type ------------------------------


@dataclass(frozen=True)
class SampleConfig:
    name: str = option("anon", "a string")
    verbose: bool = option(False, "a bool")
    count: int = option(1, "an int", minimum=0, zero="none")
    ratio: float = option(0.5, "a float", minimum=0, maximum=1)
    home: Path = option(Path("/tmp"), "a path")
    extra: Path | None = option(None, "an optional path")
    label: str | None = option(None, "an optional string")
    tags: list[str] = option(["a"], "a list", flag="--tag")


def load_sample(argv: list[str], environ: dict[str, str]) -> SampleConfig:
    args = build_parser(SampleConfig, "sample", "sample config").parse_args(argv)
    return load(SampleConfig, args, environ)


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "On"])
def test_bool_env_true_spellings(text: str) -> None:
    assert load_sample([], {"HOSTMUX_VERBOSE": text}).verbose is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "OFF"])
def test_bool_env_false_spellings(text: str) -> None:
    assert load_sample([], {"HOSTMUX_VERBOSE": text}).verbose is False


@pytest.mark.parametrize("text", ["", "maybe", "2", "y"])
def test_bool_env_other_text_is_an_error(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_sample([], {"HOSTMUX_VERBOSE": text})
    assert str(caught.value) == f"HOSTMUX_VERBOSE: expected true or false, got {text!r}"


def test_bool_flags_beat_bool_env() -> None:
    assert load_sample(["--verbose"], {"HOSTMUX_VERBOSE": "no"}).verbose is True
    assert load_sample(["--no-verbose"], {"HOSTMUX_VERBOSE": "yes"}).verbose is False


def test_bool_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "sample.toml"
    path.write_text("verbose = true\n", encoding="utf-8")
    assert load_sample(["--config", str(path)], {}).verbose is True


def test_every_type_from_env() -> None:
    config = load_sample(
        [],
        {
            "HOSTMUX_NAME": "n",
            "HOSTMUX_COUNT": " 7 ",
            "HOSTMUX_RATIO": "0.25",
            "HOSTMUX_HOME": "/srv",
            "HOSTMUX_EXTRA": "/opt/x",
            "HOSTMUX_LABEL": "",
            "HOSTMUX_TAGS": "x,y",
        },
    )
    assert config == SampleConfig(
        name="n",
        count=7,
        ratio=0.25,
        home=Path("/srv"),
        extra=Path("/opt/x"),
        label=None,
        tags=["x", "y"],
    )


def test_paths_expand_the_home_directory() -> None:
    assert load_sample([], {"HOSTMUX_HOME": "~/state"}).home == Path("~/state").expanduser()


def test_custom_flag_name_is_used_for_parsing() -> None:
    assert load_sample(["--tag", "p", "--tag", "q"], {}).tags == ["p", "q"]


def test_help_names_env_variable_and_default() -> None:
    text = build_parser(SampleConfig, "sample", "sample config").format_help()
    assert "HOSTMUX_COUNT" in text
    assert "default: 1" in text
    assert "--no-verbose" in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:22", ("0.0.0.0", 22)),
        (":8080", ("127.0.0.1", 8080)),
        ("[::1]:8443", ("::1", 8443)),
        ("example.com:0", ("example.com", 0)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_parse_host_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value, "where") == expected
