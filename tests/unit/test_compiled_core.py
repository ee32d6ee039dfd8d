"""The compiled core (setup.py, hostmux/compiled.py): built, current, and its pure fallback.

The tests run what users run: the core as an install builds it, compiled by
mypyc where a C compiler is there (CI's machine has one). The same sources,
uncompiled, are the fallback; one run of the relay's both paths on them here
keeps that fallback working.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hostmux.compiled import COMPILED, core_build, is_compiled, source_paths, stale

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    os.environ.get("HOSTMUX_PURE_PYTHON") == "1", reason="installed as pure Python on purpose"
)
def test_the_installed_core_is_compiled_and_current() -> None:
    assert [name for name in COMPILED if not is_compiled(name)] == []
    assert core_build() == "compiled"
    assert stale() == []


def test_every_compiled_module_has_its_source() -> None:
    assert all((ROOT / path).is_file() for path in source_paths())
    assert len(set(COMPILED)) == len(COMPILED)


@pytest.mark.parametrize("path", ["task", "express"])
def test_the_pure_python_fallback_relays_on_both_paths(tmp_path: Path, path: str) -> None:
    # The sources alone (no extension modules), first on the path: what an install
    # without a C compiler runs.
    shutil.copytree(ROOT / "hostmux", tmp_path / "hostmux", ignore=shutil.ignore_patterns("*.so"))
    run = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "relay_cpu.py"), "--path", path,
            "--requests", "200", "--repeats", "1", "--src", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # relay_cpu checks every answer arrived whole (it raises otherwise)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("relay CPU µs/req: best "), run.stdout
    assert run.stdout.rstrip().endswith("(core: python)"), run.stdout
