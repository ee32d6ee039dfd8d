"""What a user meets before any hostmux code runs: installing it, and ./dev's help."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
