"""A config object as the TOML an operator could have written, with its secrets masked.

For ``check-config``: every option, in declaration order, as ``name = value``
(an unset optional one as a comment, TOML having no null). Masked:

* an option whose name says it holds a secret (``secret``, ``token``,
  ``password`` in it, or ``cookie_keys``) — its value, never its length; a
  ``*_file`` option is a path, shown;
* the password of any URL (``redis://user:PASSWORD@host``), wherever it is.

Paths are shown, never what the files hold.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hostmux.config.options import declared_options

MASK = "********"
_SECRET_NAME = re.compile(r"secret|token|password|^cookie_keys$")


def mask_url(text: str) -> str:
    """``text`` with the password of its URL (if it is one, and has one) masked."""
    if "://" not in text or "@" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if not password:
        return text
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{MASK}@{host}"))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table (an array of tables' item)
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    # A JSON string is a TOML basic string (same escapes) for the text we hold.
    return json.dumps(mask_url(str(value)) if not isinstance(value, Path) else str(value))


def config_toml(config: Any) -> str:
    """``config`` (a component's config dataclass) as masked TOML lines."""
    lines = []
    for opt in declared_options(type(config)):
        value = getattr(config, opt.name)
        if value is None:
            lines.append(f"# {opt.name} is not set")
        elif _SECRET_NAME.search(opt.name) and not opt.name.endswith("_file") and value:
            lines.append(f'{opt.name} = "{MASK}"')
        else:
            lines.append(f"{opt.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
