"""One typed config object from three layers: TOML file, ``HOSTMUX_*`` env, flags.

Every component (router, listener, auth helper) declares a frozen dataclass
whose fields carry ``help`` metadata; this module turns it into an argparse
parser and fills it, later layers winning: defaults < TOML < environment <
flags. Errors are ``ConfigError`` with one line saying which option, from which
layer, and why — the CLI prints that and exits 2.

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``Path``,
``Path | None``, ``str | None``, ``list[str]`` (comma-separated in env).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")

ENV_PREFIX = "HOSTMUX_"


class ConfigError(Exception):
    """A config value is missing, unknown or of the wrong type."""


def option(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A config field: ``default`` (a list default is copied), ``help`` for --help."""
    meta = {"help": help, "flag": flag}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _flag(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("flag") or "--" + field.name.replace("_", "-"))


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, where: str) -> Any:
    base, optional = _base_type(tp)
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    origin = typing.get_origin(base)
    if origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
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
    raise TypeError(f"unsupported config type {tp!r}")  # a programming error


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
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        base, _ = _base_type(hints[field.name])
        env = ENV_PREFIX + field.name.upper()
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        help_text = f"{field.metadata['help']} (env {env}; default: {default!r})"
        if base is bool:
            parser.add_argument(
                _flag(field), dest=field.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )  # fmt: skip
        elif typing.get_origin(base) is list:
            parser.add_argument(
                _flag(field), dest=field.name, action="append", metavar="VALUE",
                default=argparse.SUPPRESS, help=help_text + "; repeat for several",
            )  # fmt: skip
        else:
            parser.add_argument(
                _flag(field), dest=field.name, metavar=field.name.split("_")[-1].upper(),
                default=argparse.SUPPRESS, help=help_text,
            )  # fmt: skip
    return parser


def load(
    cls: type[C],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Fill ``cls`` from defaults, the TOML file, the environment and parsed flags."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cast_dataclass(cls))}
    values: dict[str, Any] = {}

    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        for key, value in _read_toml(Path(config_path)).items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"{config_path}: unknown option {key!r}")
            values[name] = _convert(value, hints[name], f"{config_path}: {key}")
    for name in names:
        env = ENV_PREFIX + name.upper()
        if env in environ:
            values[name] = _convert(environ[env], hints[name], env)
    for name in names:
        if hasattr(args, name):
            field = next(f for f in dataclasses.fields(cast_dataclass(cls)) if f.name == name)
            values[name] = _convert(getattr(args, name), hints[name], _flag(field))
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


def cast_dataclass(cls: type[Any]) -> Any:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return cls


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
