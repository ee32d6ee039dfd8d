"""Diagnostic, not part of a normal run: log the hostmux router's long garbage collections.

    PYTHONPATH=bench/gc_probe .venv/bin/python bench/scale.py --steps 1,10000 --keep

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``, and every
process the benchmark starts inherits it; only ``python -m router`` installs
the hook. Each collection of the older generations that takes longer than
``THRESHOLD_MS`` writes one logfmt line to stderr (the router's log), which
the benchmark then reports among the router's log lines.
"""

from __future__ import annotations

import gc
import sys
import time

THRESHOLD_MS = 5.0  # shorter pauses do not show in a p99


def _install() -> None:
    started: list[float] = [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause_ms = (time.perf_counter() - started[0]) * 1e3
        if info["generation"] >= 1 and pause_ms >= THRESHOLD_MS:
            sys.stderr.write(
                f"level=warning event=gc_pause generation={info['generation']} "
                f"ms={pause_ms:.1f} collected={info['collected']} "
                f"tracked_objects={len(gc.get_objects())}\n"
            )

    gc.callbacks.append(on_collection)


if sys.orig_argv[1:3] == ["-m", "router"]:
    _install()
