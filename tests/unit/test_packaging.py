"""What a user meets before any hostmux code runs: installing it, and ./dev's help."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A wheel builds in a few seconds; a minute allows a loaded 2-core machine.
WHEEL_BUILD_TIMEOUT_S = 60


def test_the_license_is_declared_the_way_current_setuptools_wants() -> None:
    # A TOML table here made every install print a deprecation warning three times.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # an SPDX expression (PEP 639)
    assert project["project"]["license-files"] == ["LICENSE"]
    requires = project["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d)(\.\d+)*", r) for r in requires), requires


def test_dev_help_lists_what_the_script_runs() -> None:
    done = subprocess.run([ROOT / "dev", "help"], capture_output=True, text=True, check=True)
    commands = re.findall(r"^ {2}\./dev (\w+)", done.stdout, re.MULTILINE)
    cases = re.findall(r"^  (\w+)\)$", (ROOT / "dev").read_text(), re.MULTILINE)
    assert commands == cases == ["demo", "test"]
    assert "portal" in done.stdout and "two instances" in done.stdout  # what the demo starts
    wrong = subprocess.run([ROOT / "dev", "nonsense"], capture_output=True, text=True)
    assert wrong.returncode == 2


def test_the_docs_stand_alone() -> None:
    # A clone has no ../shared: the project's own docs carry its design.
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    dangling = [
        f"{name}:{number}"
        for name in tracked
        if name.endswith((".md", ".py", ".sh", ".toml"))
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1)
        if "../shared" in line and name != "tests/unit/test_packaging.py"
    ]
    assert dangling == []
    assert "docs/design.md" in (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "design.md").is_file()


def test_the_wheel_installs_the_components_and_not_the_examples(tmp_path: Path) -> None:
    # examples/ is run from the repository (python -m examples.portal); installed, it
    # would be a top-level package named "examples" in everyone's site-packages.
    # The wheel is built from a copy of the tracked files: a build/ left in the
    # checkout would otherwise be packed into it. Measured: about 3 s.
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    source = tmp_path / "src"
    for name in filter(None, tracked):
        if (ROOT / name).is_file():  # a file deleted in the worktree is still listed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    # Pure Python here (the layout is the same; compiling takes a minute): the compiled
    # wheel is built and checked by tests/integration/test_deploy.py.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source],
        capture_output=True, text=True, check=True, timeout=WHEEL_BUILD_TIMEOUT_S,
        env={**os.environ, "HOSTMUX_PURE_PYTHON": "1"},
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("hostmux-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert tops == {"hostmux", "router", "listener", "authhelper", "keys"}
    # Every package of the tree is in the wheel: a subpackage missing from
    # pyproject's list would install a router that cannot import it.
    packaged = {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")}
    in_tree = {
        init.parent.relative_to(ROOT).as_posix()
        for top in tops
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert packaged == in_tree
