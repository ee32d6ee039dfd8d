"""The range a numeric option accepts, declared beside the option (pure).

Every ``int`` or ``float`` config field says, where it is declared, its
``minimum``, its ``maximum`` (when it has one) and what ``0`` means — a word
such as "off" or "no caching" when 0 is accepted, nothing when it is not::

    name_reservation_s: float = option(600.0, "...", minimum=0, maximum=WEEK_S)  # 0 refused
    portal_cache_ttl_s: float = option(60.0, "...", minimum=0, maximum=DAY_S, zero="no caching")

The rules, so that a range reads the same in code, ``--help`` and the docs:

- ``minimum`` is inclusive, except that 0 is refused unless ``zero`` says what
  it means: ``minimum=0`` without ``zero`` reads "more than 0".
- ``zero`` with a ``minimum`` above 0 is a contradiction (0 could never be
  given) and is refused where the option is declared, as is a default out of
  its own range.
- ``maximum`` is inclusive; ``None`` means no upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

# Upper bounds shared by many options, named for what they are.
MINUTE_S = 60
HOUR_S = 3600
DAY_S = 86_400
WEEK_S = 7 * DAY_S
MONTH_S = 30 * DAY_S
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
PORT_MAX = 65_535


def format_number(value: float) -> str:
    """A number as a user would type it: ``600`` rather than ``600.0``, ``0.5`` as is."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class OptionRange:
    """What a numeric option accepts; see the module docstring for the rules."""

    minimum: float
    maximum: float | None = None
    zero: str | None = None  # what 0 means when it is accepted; None: 0 is refused

    def __post_init__(self) -> None:
        if self.zero is not None and self.minimum > 0:
            raise ValueError(f"zero={self.zero!r} with minimum {self.minimum}: 0 is never accepted")
        if self.maximum is not None and self.maximum < self.minimum:
            raise ValueError(f"maximum {self.maximum} is below minimum {self.minimum}")
        if self.minimum < 0 and self.zero is None:
            raise ValueError("a range below 0 must say what 0 means (zero=...)")

    def accepts(self, value: float) -> bool:
        if value == 0 and self.zero is None:
            return False
        if value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum

    def bounds(self) -> str:
        """The accepted values: ``1..65535``, ``at least 1``, ``more than 0, at most 3600``."""
        high = None if self.maximum is None else format_number(self.maximum)
        if self.minimum == 0 and self.zero is None:
            return "more than 0" + (f", at most {high}" if high is not None else "")
        low = format_number(self.minimum)
        return f"{low}..{high}" if high is not None else f"at least {low}"

    def describe(self) -> str:
        """For --help: ``0 = off; range 0..86400``, ``range 1..65535``, ``at least 1``..."""
        bounds = self.bounds()
        text = f"range {bounds}" if ".." in bounds else bounds
        return f"0 = {self.zero}; {text}" if self.zero is not None else text

    def error(self, value: float) -> str | None:
        """Why ``value`` is refused (one phrase), or None when it is accepted."""
        if self.accepts(value):
            return None
        return f"{format_number(value)} is out of range: {self.bounds()}"
