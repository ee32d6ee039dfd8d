"""Every test session: refuse to test a compiled core built from other sources than these."""

from __future__ import annotations

import pytest

from hostmux.compiled import stale


def pytest_configure(config: pytest.Config) -> None:
    if stale():
        pytest.exit(
            "the compiled core was built from other sources than these (an edit since the "
            "last install): tests would run the old code. Build it again: ./dev test does, "
            "or .venv/bin/python -m pip install --no-deps -e .",
            returncode=2,
        )
