"""bench/router_profile.py's summary: areas match py-spy frames whatever the file's prefix."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:  # bench/ is scripts, not a package
    sys.path.insert(0, str(BENCH))
summarise_raw = importlib.import_module("router_profile").summarise_raw


def share(raw: str, area: str) -> float:
    """The summary's share for the area whose label starts with ``area``."""
    pct: float = next(a["pct"] for a in summarise_raw(raw)["areas"] if a["area"].startswith(area))
    return pct


def test_areas_match_relative_and_absolute_file_paths() -> None:
    raw = "\n".join(
        [
            # Our code as py-spy names it (relative to the working directory) ...
            "run (asyncio/runners.py:118);receive_data (hostmux/http1/connection.py:80) 3",
            # ... and a library's frame with its absolute path in the venv.
            "run (asyncio/runners.py:118);write (/x/.venv/lib/python3.11/site-packages/"
            "asyncssh/channel.py:900) 1",
        ]
    )
    assert share(raw, "HTTP parsing") == 75.0
    assert share(raw, "SSH channel writes") == 25.0


def test_areas_match_methods_named_with_their_class() -> None:
    """py-spy on Python 3.11 names a method by its qualified name (``Class.method``)."""
    raw = "\n".join(
        [
            "run (asyncio/runners.py:118);Connection.receive_data "
            "(hostmux/http1/connection.py:142) 1",
            "run (asyncio/runners.py:118);CoalescingTransport._flush "
            "(hostmux/tunnel/coalescing.py:64) 1",
        ]
    )
    assert share(raw, "HTTP parsing") == 50.0
    assert share(raw, "SSH socket sends") == 50.0
