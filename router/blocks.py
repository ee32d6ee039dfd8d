"""Keys and names the operator blocked (pure rules; kept by ``router.admin.stores``).

Rules:

1. A block is on a *key* (an owner as the route table knows it: the key's
   ``SHA256:`` fingerprint, or ``instance:ID`` for a portal instance) or on a
   *name* (a DNS label).
2. A blocked key claims nothing; a blocked name is claimed by nobody. The
   client is told why, in one line (``refusal``).
3. Blocking is also kicking: the tunnels a new block matches are closed by
   whoever applies it (``matches``).
4. Blocks outlive restarts: the list is persisted by its store (a file in
   state_dir, or the route registry when there is one).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hostmux.names import InvalidName, check_name

Kind = Literal["key", "name"]
KINDS: tuple[Kind, ...] = ("key", "name")
# Reason: an owner is an SSH fingerprint (~50 characters) or ``instance:ID``; far above.
MAX_KEY_CHARS = 200
# Reason: a reason is shown in a table and a log line, not an essay.
MAX_REASON_CHARS = 200


class BadBlock(ValueError):
    """A block that is not one (unknown kind, malformed value); the message says why."""


@dataclass(frozen=True, slots=True)
class Block:
    kind: Kind
    value: str
    by: str = ""  # who set it (the admin client's address and token id)
    at: float = field(default_factory=time.time)  # Unix time it was set
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Block:
        """A block from its JSON form (a file or the registry); BadBlock if malformed."""
        if not isinstance(data, dict):
            raise BadBlock("a block is a JSON object")
        kind, value = checked(data.get("kind"), data.get("value"))
        reason = data.get("reason", "")
        by, at = data.get("by", ""), data.get("at", 0.0)
        if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
            raise BadBlock(f"reason: a string of at most {MAX_REASON_CHARS} characters")
        if not isinstance(by, str) or not isinstance(at, int | float):
            raise BadBlock("by: a string; at: a number")
        return cls(kind=kind, value=value, by=by, at=float(at), reason=reason)


def checked(kind: object, value: object) -> tuple[Kind, str]:
    """``(kind, value)`` if they make a block (a name lower-cased), else BadBlock."""
    if kind not in KINDS:
        raise BadBlock("kind: 'key' (an SSH key fingerprint or instance:ID) or 'name'")
    if not isinstance(value, str) or not value:
        raise BadBlock("value: a non-empty string")
    if kind == "name":
        try:
            return "name", check_name(value.lower())
        except InvalidName as exc:
            raise BadBlock(f"value: {exc}") from None
    if len(value) > MAX_KEY_CHARS or not value.isprintable() or " " in value:
        raise BadBlock(f"value: 1-{MAX_KEY_CHARS} printable characters without spaces")
    return "key", value


class BlockList:
    """The blocks in force in this process (rules 1-3); replaced whole when reloaded."""

    def __init__(self, blocks: Iterable[Block] = ()) -> None:
        self._keys: dict[str, Block] = {}
        self._names: dict[str, Block] = {}
        self.replace(blocks)

    def __repr__(self) -> str:
        return f"<BlockList keys={len(self._keys)} names={len(self._names)}>"

    def __len__(self) -> int:
        return len(self._keys) + len(self._names)

    def replace(self, blocks: Iterable[Block]) -> None:
        keys: dict[str, Block] = {}
        names: dict[str, Block] = {}
        for block in blocks:
            (keys if block.kind == "key" else names)[block.value] = block
        self._keys, self._names = keys, names

    def add(self, block: Block) -> None:
        (self._keys if block.kind == "key" else self._names)[block.value] = block

    def remove(self, kind: Kind, value: str) -> Block | None:
        return (self._keys if kind == "key" else self._names).pop(value, None)

    def all(self) -> list[Block]:
        return sorted([*self._keys.values(), *self._names.values()], key=lambda b: b.at)

    def refusal(self, owner: str, name: str) -> str | None:
        """What a client claiming ``name`` as ``owner`` is told, or None if not blocked."""
        if not self._keys and not self._names:  # the usual case: two falsy checks
            return None
        if owner in self._keys:
            return "this key is blocked by the router's operator"
        if name in self._names:
            return f"the name {name!r} is blocked by the router's operator"
        return None
