"""The CI regression guard: the router's CPU per request against the asyncssh ceiling's (pure).

CPU per request is what noise moves least (issue 18: ~2.7x the ceiling on
every machine measured, while req/s ratios swung from 0.12x to 0.60x), so a
change that makes the router slower fails CI even on a busy runner. Both
figures come from the same run, so the machine cancels out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The row whose router CPU is judged, and the one it is judged against.
ROUTER_ROW, CEILING_ROW = "hostmux-openssh", "pipe-ceiling"
# Issue 18's line: ~2.7x today on both machines measured (1.6x is the goal), so
# 4x leaves room for the smoke's 2 s loads on a busy runner and still catches a
# change that costs the router half as much CPU again per request.
DEFAULT_MAX_RATIO = 4.0


@dataclass(frozen=True, slots=True)
class CpuVerdict:
    """What the guard found: the ratio (None when a row has no figure) and whether it passed."""

    ratio: float | None
    router_us: float | None
    ceiling_us: float | None
    max_ratio: float

    @property
    def passed(self) -> bool:
        return self.ratio is not None and self.ratio <= self.max_ratio

    def line(self) -> str:
        """One line for the CI log."""
        if self.ratio is None:
            missing = ROUTER_ROW if self.router_us is None else CEILING_ROW
            return f"cpu-guard FAIL: no router CPU per request for {missing} in this run"
        verdict = "ok" if self.passed else "FAIL"
        return (
            f"cpu-guard {verdict}: router CPU per request {ROUTER_ROW} {self.router_us:.0f} us "
            f"/ {CEILING_ROW} {self.ceiling_us:.0f} us = {self.ratio:.2f}x "
            f"(limit {self.max_ratio:g}x)"
        )


def judge(medians: Mapping[str, Mapping[str, Any]], max_ratio: float) -> CpuVerdict:
    """The verdict for per-row medians (``report.medians``) against ``max_ratio``."""
    router = _cpu(medians, ROUTER_ROW)
    ceiling = _cpu(medians, CEILING_ROW)
    ratio = router / ceiling if router is not None and ceiling else None
    return CpuVerdict(ratio, router, ceiling, max_ratio)


def _cpu(medians: Mapping[str, Mapping[str, Any]], row: str) -> float | None:
    value = (medians.get(row) or {}).get("router_cpu_us")
    return float(value) if isinstance(value, int | float) and value > 0 else None
