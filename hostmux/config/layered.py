"""One typed config object from three layers: TOML file, ``HOSTMUX_*`` env, flags.

Every component (router, listener, auth helper) declares a frozen dataclass
whose fields are ``option(...)`` (see ``_options``: help, and for numbers the
range); this module turns it into an argparse parser and fills it, later
layers winning: defaults < TOML < environment < flags. Each value is checked
against its type and declared range in the layer it comes from, so errors are
``ConfigError`` with one line saying which option, from which layer (the TOML
file and key, the variable or the flag), and why — the CLI prints that and
exits 2.

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``Path``,
``Path | None``, ``str | None``, ``list[str]`` (comma-separated in env).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hostmux.config.options import (
    ENV_PREFIX,
    Option,
    check_ranges,
    declared_options,
    help_text,
    option,
)

C = TypeVar("C")


class ConfigError(Exception):
    """A config value is missing, unknown, of the wrong type or out of range."""


def _convert(value: Any, opt: Option, where: str) -> Any:
    """``value`` from one layer as ``opt``'s type, checked against its declared range."""
    converted = _convert_type(value, opt, where)
    if (reason := opt.range_error(converted)) is not None:
        raise ConfigError(f"{where}: {reason}")
    return converted


def _convert_type(value: Any, opt: Option, where: str) -> Any:
    base, optional = opt.base, opt.optional
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if opt.is_tables:  # TOML only: the class checks each table's keys
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{where}: expected an array of tables ([[{opt.name}]])")
        return value
    if opt.is_list:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        # ``--http-listen ''`` (or an empty variable) is how a list is emptied.
        return [v.strip() for v in value if v.strip()]
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if base in (int, float):
        kind = "an integer" if base is int else "a finite number"
        if isinstance(value, bool) or (base is int and isinstance(value, float)):
            raise ConfigError(f"{where}: expected {kind}, got {value!r}")
        try:
            number = base(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected {kind}, got {value!r}")
        return number
    if base is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value).expanduser()
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {opt.base!r}")  # a programming error


def package_version() -> str:
    """hostmux's version as installed (``unknown`` when run from a checkout only)."""
    try:
        return importlib.metadata.version("hostmux")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser(cls: type[Any], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=(
            "Every option can also be set in the TOML file given by --config (same name, "
            f"with underscores) or as the environment variable {ENV_PREFIX}<NAME> "
            "(upper case); flags win over the environment, which wins over the file."
        ),
    )
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (env {ENV_PREFIX}CONFIG)"
    )
    parser.add_argument("--version", action="version", version=f"{prog} {package_version()}")
    for opt in declared_options(cls):
        if opt.toml_only:
            continue
        if opt.base is bool:
            parser.add_argument(
                opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text(opt),
            )  # fmt: skip
        else:
            parser.add_argument(
                opt.flag, dest=opt.name, metavar=opt.metavar, default=argparse.SUPPRESS,
                action="append" if opt.is_list else "store", help=help_text(opt),
            )  # fmt: skip
    return parser


def load(
    cls: type[C],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Fill ``cls`` from defaults, the TOML file, the environment and parsed flags."""
    environ = os.environ if environ is None else environ
    options = {opt.name: opt for opt in declared_options(cls)}
    values: dict[str, Any] = {}

    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        for key, value in _read_toml(Path(config_path)).items():
            name = key.replace("-", "_")
            if name not in options:
                raise ConfigError(f"{config_path}: unknown option {key!r}")
            values[name] = _convert(value, options[name], f"{config_path}: {key}")
    for name, opt in options.items():
        if opt.env in environ and not opt.toml_only:
            values[name] = _convert(environ[opt.env], opt, opt.env)
    for name, opt in options.items():
        if hasattr(args, name):
            values[name] = _convert(getattr(args, name), opt, opt.flag)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def with_defaults(environ: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus ``HOSTMUX_<KEY>`` for each of ``defaults`` it does not set itself
    (how another program's variables, such as DIT4C's, become ours)."""
    merged = {ENV_PREFIX + key: value for key, value in defaults.items()}
    merged.update(environ)
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def parse_host_port(value: str, where: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` → (host, port); port 0 means any free port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or default_host
    return host, int(port_text)


def parse_listen_list(values: Sequence[str], where: str) -> list[tuple[str, int]]:
    return [parse_host_port(v, where) for v in values]


__all__ = [
    "ConfigError",
    "build_parser",
    "check_ranges",
    "load",
    "option",
    "package_version",
    "parse_host_port",
    "parse_listen_list",
    "with_defaults",
]  # fmt: skip
