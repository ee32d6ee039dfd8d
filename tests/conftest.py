"""Every test session: refuse to test a compiled core older than its source."""

from __future__ import annotations

import pytest

from hostmux.compiled import stale


def pytest_configure(config: pytest.Config) -> None:
    if outdated := stale():
        pytest.exit(
            "the compiled core is older than its source ("
            + ", ".join(outdated)
            + "): tests would run the old code. Build it again: ./dev test does, "
            "or .venv/bin/python -m pip install --no-deps -e .",
            returncode=2,
        )
