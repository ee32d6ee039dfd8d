"""The compiled core (setup.py, hostmux/compiled.py): built, current, and its pure fallback.

The tests run what users run: the core as an install builds it, compiled by
mypyc where a C compiler is there (CI's machine has one). The same sources,
uncompiled, are the fallback; one run of the relay's both paths on them here
keeps that fallback working.
"""

from __future__ import annotations

import importlib.util
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
    assert not stale()


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


def test_a_build_is_stale_once_a_source_changes_not_when_it_is_touched(tmp_path: Path) -> None:
    # A checkout beside the real one: the sources and the record setup.py writes for them.
    for path in ["hostmux/compiled.py", *source_paths()]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tmp_path / path)
    spec = importlib.util.spec_from_file_location("compiled_copy", tmp_path / "hostmux/compiled.py")
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    if copy.core_build() != "compiled":  # (its modules are found where this test's are)
        pytest.skip("the core is not compiled in this install")
    assert not copy.stale()  # no record: a wheel, or built elsewhere
    record = tmp_path / "hostmux" / copy.BUILT_FROM
    record.write_text(copy.sources_digest(tmp_path) + "\n")
    assert not copy.stale()
    source = tmp_path / source_paths()[0]
    os.utime(source)  # a checkout that rewrote the same bytes
    assert not copy.stale()
    source.write_text(source.read_text() + "\n# edited\n")
    assert copy.stale()
