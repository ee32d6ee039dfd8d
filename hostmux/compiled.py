"""The per-request core that setup.py compiles with mypyc, and which build of it runs.

Standard library only: setup.py reads ``COMPILED`` before hostmux is installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# The HTTP/1 core and the relay (the router's and the auth helper's): every
# request runs through them. Each is plain typed Python that also runs
# uncompiled. The relay's WebSocket splice (``except*``, which mypyc cannot
# compile yet), its front door (once per connection) and everything else stay
# Python.
COMPILED = (
    "hostmux.http1.checked_events",
    "hostmux.http1.checks",
    "hostmux.http1.connection",
    "hostmux.http1.cookies",
    "hostmux.http1.events",
    "hostmux.http1.frame_edges",
    "hostmux.http1.framing",
    "hostmux.http1.header_facts",
    "hostmux.http1.headers",
    "hostmux.http1.pages",
    "hostmux.http1.parser",
    "hostmux.relay.browser",
    "hostmux.relay.deadline",
    "hostmux.relay.express",
    "hostmux.relay.gateway",
    "hostmux.relay.outcomes",
    "hostmux.relay.records",
    "hostmux.relay.relay",
    "hostmux.relay.response",
    "hostmux.relay.streams",
    "hostmux.relay.transport_stream",
    "hostmux.relay.upload",
    "hostmux.relay.upstream",
)


def module_file(name: str) -> str | None:
    """Where module ``name`` is loaded from (its spec's origin; imports its package)."""
    spec = importlib.util.find_spec(name)
    return None if spec is None else spec.origin


def is_compiled(name: str) -> bool:
    origin = module_file(name) or ""
    return any(origin.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def core_build() -> str:
    """``compiled`` when every module of the core is its mypyc extension, else ``python``."""
    return "compiled" if all(is_compiled(name) for name in COMPILED) else "python"


# Written by setup.py beside the sources when it builds the core in place (an
# editable install): the digest of the sources it compiled.
BUILT_FROM = "compiled-sources.sha256"


def sources_digest(root: Path) -> str:
    """SHA-256 over the compiled modules' paths and contents, under ``root`` (the repository)."""
    digest = hashlib.sha256()
    for path in source_paths():
        digest.update(path.encode() + b"\0" + (root / path).read_bytes() + b"\0")
    return digest.hexdigest()


def stale() -> bool:
    """True when the core was compiled in place from sources that have changed since.

    An extension module wins over its ``.py`` at import, so in an editable
    install an edited source does not run until it is built again
    (``pip install -e .``; ``./dev`` does it when the sources change). An
    install without the record (a wheel, pure Python) is never stale.
    """
    package = Path(__file__).resolve().parent
    try:
        built_from = (package / BUILT_FROM).read_text().strip()
    except FileNotFoundError:
        return False
    return core_build() == "compiled" and built_from != sources_digest(package.parent)


def source_paths() -> list[str]:
    """The compiled modules' sources, relative to the repository root."""
    return [name.replace(".", "/") + ".py" for name in COMPILED]


if __name__ == "__main__":  # ./dev: the files whose change means a rebuild
    print("\n".join(source_paths()))
