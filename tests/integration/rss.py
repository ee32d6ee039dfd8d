"""A process's resident memory from /proc: its peak growth over a window of a test.

``VmHWM`` (the peak RSS) is reset by writing 5 to ``/proc/PID/clear_refs``
(Linux >= 4.0; allowed for our own children), so the peak seen at the end of
the window is the peak *during* it, however short-lived; a before/after pair
of ``VmRSS`` readings would miss a buffer that grew and was freed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RssWindow:
    pid: int
    baseline_bytes: int  # VmRSS when the window opened


def status_bytes(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"/proc/{pid}/status has no {field}")


def start_rss_window(pid: int) -> RssWindow:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    return RssWindow(pid, status_bytes(pid, "VmRSS"))


def peak_rss_growth_bytes(window: RssWindow) -> int:
    """How far the peak RSS since the window opened rose above its baseline."""
    return max(0, status_bytes(window.pid, "VmHWM") - window.baseline_bytes)
