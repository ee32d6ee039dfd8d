"""The per-request core that setup.py compiles with mypyc, and which build of it runs.

Standard library only: setup.py reads ``COMPILED`` before hostmux is installed.
"""

from __future__ import annotations

import importlib.util
import os
from importlib.machinery import EXTENSION_SUFFIXES

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


def stale() -> list[str]:
    """Compiled modules whose source changed after they were built (an editable install).

    An extension module wins over its ``.py`` at import, so an edited source
    does not run until it is built again (``pip install -e .``; ``./dev``
    does it when the sources change). Only meaningful in a checkout: an
    installed wheel's files carry its install time.
    """
    found = []
    for name in COMPILED:
        built = module_file(name)
        if built is None or not is_compiled(name):
            continue
        source = built.rsplit("/", 1)[0] + "/" + name.rsplit(".", 1)[1] + ".py"
        try:
            if os.stat(source).st_mtime > os.stat(built).st_mtime:
                found.append(name)
        except FileNotFoundError:
            continue
    return found


def source_paths() -> list[str]:
    """The compiled modules' sources, relative to the repository root."""
    return [name.replace(".", "/") + ".py" for name in COMPILED]


if __name__ == "__main__":  # ./dev: the files whose change means a rebuild
    print("\n".join(source_paths()))
