"""hostmux's compiled core: the per-request HTTP modules, compiled by mypyc.

Everything else about the package is in pyproject.toml. The modules listed in
``hostmux/compiled.py`` (the HTTP/1 core and the relay's per-request path,
shared by the router and the auth helper) are plain typed Python; mypyc
compiles the same files to C extensions, which cut the relay's own CPU per
request by a fifth to a third (``bench/relay_cpu.py``, bench/OPTIMISATION.md).
Where they cannot be built (no C compiler, or ``HOSTMUX_PURE_PYTHON=1`` at
install), hostmux is installed as pure Python: the same code, slower.
``hostmux.compiled.core_build()`` says which one runs; the router and the
auth helper log it at start (``core=``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "hostmux"))
from compiled import BUILT_FROM, source_paths, sources_digest  # noqa: E402  (stdlib only)

del sys.path[0]


class OptionalBuildExt(build_ext):
    """Builds the compiled core, or nothing: pure Python is the fallback, never half of each."""

    def run(self) -> None:
        record = HERE / "hostmux" / BUILT_FROM
        record.unlink(missing_ok=True)
        try:
            super().run()
        except Exception as exc:  # a compiler missing or failing: say so, install pure Python
            for built in self.get_outputs():
                Path(built).unlink(missing_ok=True)
            print(
                f"warning: hostmux's compiled core was not built ({exc}); "
                "installing pure Python (same behaviour, more CPU per request)",
                file=sys.stderr,
            )
            return
        if self.extensions and (self.inplace or getattr(self, "editable_mode", False)):
            # Built beside the sources (an editable install): what they were, so that a
            # later edit is seen as such (hostmux.compiled.stale, tests/conftest.py).
            record.write_text(sources_digest(HERE) + "\n")


def ext_modules() -> list[object]:
    if os.environ.get("HOSTMUX_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("warning: mypyc is missing; installing pure Python", file=sys.stderr)
        return []
    paths = source_paths()
    try:
        return list(mypycify(paths, opt_level="3", group_name="hostmux_core"))
    except SystemExit as exc:  # mypyc's type check failed: it exits
        print(f"warning: mypyc refused the core ({exc}); installing pure Python", file=sys.stderr)
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
