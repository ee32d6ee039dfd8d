"""Who may open tunnels, and which names each client may hold (pure rules).

The authorized_keys file is OpenSSH's format. A key line may carry
``permitlisten="PATTERN"`` options (repeatable, like OpenSSH's own option of
that name, whose host part is here the tunnel name): the key may then hold
only names matching one of the patterns (``*`` and ``?`` wildcards, an optional
``:PORT`` suffix is ignored). Without the option a key may hold any free name.
Example::

    permitlisten="jupyter-*",permitlisten="demo" ssh-ed25519 AAAA... alice
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What one authenticated client may do.

    ``owner`` is who names belong to: the key's fingerprint for keys from
    authorized_keys, ``instance:<id>`` for portal instances (whatever key or
    certificate they use today). ``default_name`` is the name a forward
    without one gets (an instance's id); without it such a forward gets a
    random name, unless ``name_patterns`` restricts the client.
    """

    owner: str
    comment: str
    name_patterns: tuple[str, ...] | None  # None: any name; (): none at all
    default_name: str | None = None
    # DIT4C protocol roles: "register" may only run ``INSTANCE_ID``; "listen"
    # may also run ``SOCKET`` (print the URL); "tunnel" is everyone else.
    role: Literal["tunnel", "register", "listen"] = "tunnel"

    @classmethod
    def for_instance(
        cls, instance_id: str, how: str, role: Literal["tunnel", "listen"] = "tunnel"
    ) -> KeyGrant:
        return cls(
            owner=f"instance:{instance_id}",
            comment=how,
            name_patterns=(instance_id,),
            default_name=instance_id,
            role=role,
        )

    def may_hold(self, name: str) -> bool:
        if self.name_patterns is None:
            return True
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.name_patterns)

    def describe_names(self) -> str:
        if self.name_patterns is None:
            return "any name"
        return ", ".join(self.name_patterns) or "no name"


def name_patterns_from_options(values: Sequence[str] | None) -> tuple[str, ...] | None:
    """``permitlisten`` option values → name patterns (the ``:port`` part dropped)."""
    if not values:
        return None
    patterns = []
    for value in values:
        host = value.rsplit(":", 1)[0] if ":" in value else value
        patterns.append(host.strip().lower())
    return tuple(patterns)
