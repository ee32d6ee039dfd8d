"""The benchmark's CI guard (``bench/cpu_guard.py``): router CPU per request vs the ceiling's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_guard() -> ModuleType:
    # bench/ is scripts, not a package: load the module from its file.
    spec = importlib.util.spec_from_file_location("cpu_guard", BENCH / "cpu_guard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cpu_guard", module)  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


guard = _load_guard()


def rows(router_us: float | None, ceiling_us: float | None) -> dict[str, dict[str, object]]:
    return {
        "hostmux-openssh": {"runs": 1, "ok": 1, "router_cpu_us": router_us},
        "pipe-ceiling": {"runs": 1, "ok": 1, "router_cpu_us": ceiling_us},
        "sshd-nginx-ka": {"runs": 1, "ok": 1, "router_cpu_us": 10.0},
    }


def test_todays_ratio_passes_and_says_it() -> None:
    verdict = guard.judge(rows(263.0, 97.0), 4.0)
    assert verdict.passed
    assert verdict.ratio == pytest.approx(263 / 97)
    assert verdict.line() == (
        "cpu-guard ok: router CPU per request hostmux-openssh 263 us / pipe-ceiling 97 us "
        "= 2.71x (limit 4x)"
    )


def test_a_slower_router_fails() -> None:
    verdict = guard.judge(rows(401.0, 100.0), 4.0)
    assert not verdict.passed
    assert verdict.line().startswith("cpu-guard FAIL: ")
    assert "= 4.01x (limit 4x)" in verdict.line()


def test_exactly_at_the_limit_passes() -> None:
    assert guard.judge(rows(400.0, 100.0), 4.0).passed


@pytest.mark.parametrize(
    ("router_us", "ceiling_us", "missing"),
    [(None, 97.0, "hostmux-openssh"), (263.0, None, "pipe-ceiling"), (263.0, 0.0, "pipe-ceiling")],
)
def test_a_missing_figure_fails_and_names_the_row(
    router_us: float | None, ceiling_us: float | None, missing: str
) -> None:
    verdict = guard.judge(rows(router_us, ceiling_us), 4.0)
    assert not verdict.passed
    assert verdict.line() == f"cpu-guard FAIL: no router CPU per request for {missing} in this run"


def test_a_row_left_out_fails() -> None:
    verdict = guard.judge({"hostmux-openssh": {"router_cpu_us": 263.0}}, 4.0)
    assert not verdict.passed
    assert "pipe-ceiling" in verdict.line()
