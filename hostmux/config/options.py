"""Config options as declared: ``option(...)`` fields and how they read in --help and the docs.

A component's config is a frozen dataclass whose fields are ``option(...)``:
a default, a help line, and for every ``int`` or ``float`` field its range
(``minimum``, ``maximum``, ``zero``; see ``_option_range``). ``declared_options``
reads the fields back and refuses a numeric field with no range (or a range on
anything else), so an option cannot be added without one. ``help_text`` and
``options_markdown`` render each option the same way for ``--help`` and for
docs/configuration.md: a metavar saying what the value is (SECONDS, BYTES,
FILE, HOST:PORT, N...) and the default as a user would type it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostmux.config.ranges import OptionRange, format_number

ENV_PREFIX = "HOSTMUX_"


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    zero: str | None = None,
    toml_only: bool = False,
) -> Any:
    """A config field: ``default`` (a list default is copied), ``help`` for --help, and for
    a number its range: ``minimum``, ``maximum`` (None: none) and what 0 means (``zero``,
    e.g. "off"; None: 0 is refused). ``metavar`` overrides the one guessed from the name."""
    value_range = None
    if minimum is not None:
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise TypeError(f"only numbers have a range, not {default!r}")
        value_range = OptionRange(minimum, maximum, zero)
        if not value_range.accepts(default):
            raise ValueError(f"default {default!r} is outside its own range")
    elif maximum is not None or zero is not None:
        raise TypeError("maximum and zero need a minimum")
    meta = {
        "help": help, "flag": flag, "metavar": metavar, "range": value_range,
        "toml_only": toml_only,
    }  # fmt: skip
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One declared option, as the loader and the help see it."""

    name: str
    base: Any  # the field's type without ``| None``
    optional: bool
    help: str
    default: Any
    value_range: OptionRange | None
    flag: str
    metavar: str | None
    # Only in the TOML file (an array of tables, ``[[name]]``): no flag, no variable.
    toml_only: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_number(self) -> bool:
        return self.base in (int, float)

    @property
    def is_list(self) -> bool:
        """A list of strings (a list of tables is ``is_tables``)."""
        return typing.get_origin(self.base) is list and not self.is_tables

    @property
    def is_tables(self) -> bool:
        """An array of TOML tables (``list[dict[str, Any]]``, TOML only)."""
        args = typing.get_args(self.base)
        return typing.get_origin(self.base) is list and typing.get_origin(args[0]) is dict

    def range_error(self, value: Any) -> str | None:
        """Why ``value`` is outside the declared range, or None (also for no range)."""
        if self.value_range is None or value is None:
            return None
        return self.value_range.error(value)


def declared_options(cls: type[Any]) -> list[Option]:
    """The options of config class ``cls``; TypeError for a number without a range."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        base, optional = _base_type(hints[field.name])
        value_range = field.metadata.get("range")
        if base in (int, float) and value_range is None:
            raise TypeError(f"{cls.__name__}.{field.name}: a number needs minimum=... (its range)")
        if base not in (int, float) and value_range is not None:
            raise TypeError(f"{cls.__name__}.{field.name}: only numbers have a range")
        default = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        metavar = field.metadata.get("metavar") or _guess_metavar(field.name, base)
        toml_only = bool(field.metadata.get("toml_only"))
        option_ = Option(
            field.name, base, optional, field.metadata["help"], default, value_range, flag,
            metavar, toml_only,
        )  # fmt: skip
        if option_.is_tables != toml_only:
            raise TypeError(f"{cls.__name__}.{field.name}: arrays of tables are TOML only")
        found.append(option_)
    return found


def check_ranges(config: Any) -> None:
    """ValueError naming the first field of ``config`` outside its declared range (for a
    config built in code; the loader checks each layer itself and names the layer)."""
    for opt in declared_options(type(config)):
        if (reason := opt.range_error(getattr(config, opt.name))) is not None:
            raise ValueError(f"{opt.name}: {reason}")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the type, whether None is allowed)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _guess_metavar(name: str, base: Any) -> str | None:
    """What the value is, from the unit in the name or the type; None for a switch."""
    if base is bool:
        return None
    for suffix, metavar in (
        ("_s", "SECONDS"), ("_bytes", "BYTES"), ("_port", "PORT"), ("_listen", "HOST:PORT"),
        ("_file", "FILE"), ("_dir", "DIR"), ("_url", "URL"),
    ):  # fmt: skip
        if name.endswith(suffix):
            return metavar
    if base in (int, float):
        return "N"
    if base is Path:
        return "PATH"
    return name.rsplit("_", 1)[-1].upper()


def default_text(opt: Option) -> str | None:
    """The default as a user would type it (``~`` for home, lists comma-separated, ``none``
    when empty); None when the help line already says what an empty default means."""
    value = opt.default
    if value is None or value in ("", []):
        return None if "default" in opt.help or "empty" in opt.help else "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, Path):
        return _tilde(value)
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def _tilde(path: Path) -> str:
    home = Path.home()
    if path == home:
        return "~"
    if home in path.parents:
        return "~/" + str(path.relative_to(home))
    return str(path)


def help_text(opt: Option) -> str:
    """The --help line: what it does, then env, default and range in one parenthesis."""
    notes = [f"env {opt.env}"]
    if (default := default_text(opt)) is not None:
        notes.append(f"default: {default}")
    if opt.value_range is not None:
        notes.append(opt.value_range.describe())
    if opt.is_list:
        notes.append("repeat for several, '' for none")
    return f"{opt.help} ({'; '.join(notes)})"


def options_markdown(cls: type[Any]) -> str:
    """A Markdown table of ``cls``'s options (docs/configuration.md)."""
    rows = [
        "| option (TOML) | flag | default | range | what |",
        "|---|---|---|---|---|",
    ]
    for opt in declared_options(cls):
        flag = opt.flag if opt.metavar is None else f"{opt.flag} {opt.metavar}"
        if opt.toml_only:
            flag = f"[[{opt.name}]] (TOML only)"
        default = default_text(opt)
        rows.append(
            f"| `{opt.name}` | `{flag}` | {f'`{default}`' if default else ''} "
            f"| {opt.value_range.describe() if opt.value_range else ''} "
            f"| {opt.help.replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"
