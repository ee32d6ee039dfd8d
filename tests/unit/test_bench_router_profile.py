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


def test_native_frames_of_the_compiled_core_are_named_back_to_their_source() -> None:
    """With ``--native``, mypyc's C functions still count for the areas they came from."""
    raw = "\n".join(
        [
            "run (asyncio/runners.py:118);CPyPy_connection___Http1Connection___receive_data "
            "(__native_hostmux_core.c:7551);CPyDef_parser___LlhttpParsing___on_header "
            "(__native_hostmux_core.c:41603) 3",
            "run (asyncio/runners.py:118);CPyDef_headers____drop (__native_hostmux_core.c:90);"
            "write (libc.so.6) 1",
        ]
    )
    summary = summarise_raw(raw)
    assert share(raw, "HTTP parsing") == 75.0
    assert share(raw, "header rewriting") == 25.0
    assert summary["own"][0]["function"] == "LlhttpParsing.on_header"
    kinds = {k["kind"].split(" (")[0]: k["pct"] for k in summary["kinds"]}
    assert kinds == {"the compiled core": 75.0, "system calls": 25.0}


def test_an_idle_executor_thread_is_left_out_with_native_frames() -> None:
    raw = "\n".join(
        [
            "_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81);"
            "_queue_SimpleQueue_get (_queuemodule.c.h:177);0x7f77cc4a3f16 (libc.so.6) 5",
            "run (asyncio/runners.py:118);SSHChannel.write (asyncssh/channel.py:900) 1",
        ]
    )
    summary = summarise_raw(raw)
    assert summary["samples"] == 1
    assert summary["idle_worker_samples"] == 5
    assert share(raw, "SSH channel writes") == 100.0
