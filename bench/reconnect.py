"""How fast a listener is back after a router restart (issue 18), and how fast it starts.

    .venv/bin/python bench/reconnect.py              # 5 restarts, a small table
    .venv/bin/python bench/reconnect.py --restarts 9

One router (plain HTTP front door, its own dev CA), the sample app, one
``hostmux-listener`` with its default back-off and URL self-check on, as users
run it. First: listener process start -> first correct answer through its URL.
Then, ``--restarts`` times: let the tunnel last (``LASTED_S`` and a margin,
answering throughout), SIGTERM the router, start it again on the same ports
and state directory, and time the first correct answer from the moment all
three of its ports accept again. Loopback only; every wait has a deadline; every
process started is stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from processes import Proc, Processes, free_port, say  # noqa: E402
from rows import PROJECT, start_hostmux_router  # noqa: E402

from listener._reconnect import LASTED_S  # noqa: E402

NAME = "quick"
# A restarted router answers at once; a listener not back within this is a failure.
ANSWER_TIMEOUT_S = 30.0
# Between probes: the figures are read to about this.
PROBE_GAP_S = 0.01
# Past LASTED_S, so the tunnel counts as one that lasted (the 2 s goal assumes it).
LASTED_MARGIN_S = 0.5
# The sample app's answer to GET /.
APP_PATH = "/"
# Issue 18: the first correct answer within 2 s of the router listening again (median).
GOAL_MS = 2000.0
# The import floor of a listener's start-up (bench/OPTIMISATION.md, "listener start-up").
FLOOR_CODE = "import asyncssh, cryptography"


def answers(port: int, host: str) -> bool:
    """One GET through the router's HTTP front door: True on 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", APP_PATH, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def first_answer_s(port: int, host: str, since: float, listener: Proc) -> float:
    """Seconds from ``since`` to the first 200; raises past ``ANSWER_TIMEOUT_S``."""
    while time.monotonic() < since + ANSWER_TIMEOUT_S:
        if answers(port, host):
            return time.monotonic() - since
        if not listener.alive():
            raise RuntimeError(f"the listener exited:\n{listener.log_tail()}")
        time.sleep(PROBE_GAP_S)
    raise RuntimeError(f"no 200 within {ANSWER_TIMEOUT_S:g} s:\n{listener.log_tail()}")


def import_floor(code: Path, runs: int) -> dict[str, Any]:
    """The listener's start-up floor: wall time of a fresh interpreter importing asyncssh
    and cryptography (``FLOOR_CODE``), and of the interpreter alone; medians of ``runs``."""

    def wall_ms(argv: list[str]) -> float:
        started = time.monotonic()
        subprocess.run(argv, cwd=code, check=True, timeout=60, capture_output=True)
        return (time.monotonic() - started) * 1e3

    imports = [wall_ms([sys.executable, "-c", FLOOR_CODE]) for _ in range(runs)]
    bare = [wall_ms([sys.executable, "-c", "pass"]) for _ in range(runs)]
    return {
        "code": FLOOR_CODE,
        "runs_ms": imports,
        "median_ms": statistics.median(imports),
        "interpreter_ms": statistics.median(bare),
    }


def measure(procs: Processes, work: Path, code: Path, restarts: int) -> dict[str, Any]:
    """Listener start -> first 200, then ``restarts`` router restarts: the figures.

    Returns ``start_ms``, ``restarts`` (``down_ms``: SIGTERM -> all three ports
    accept again; ``back_ms``: from then to the first 200) and ``median_back_ms``.
    """
    router = start_hostmux_router(procs, work, None, log_level="info", code=code)
    app_port = free_port()
    procs.spawn(
        "sample-app", [sys.executable, "-m", "examples.sample_app", "--port", app_port],
        cwd=code, wait_for=[app_port],
    )  # fmt: skip
    host = f"{router.host(NAME)}:{router.http_port}"
    argv = router.listener_client(NAME, app_port)
    started = time.monotonic()
    listener = procs.spawn("listener", argv, cwd=code)
    start_s = first_answer_s(router.http_port, host, started, listener)
    say(f"listener start -> first 200: {start_s * 1e3:.0f} ms")
    router_proc = router.proc
    rows: list[dict[str, float]] = []
    for n in range(1, restarts + 1):
        up = time.monotonic()
        while time.monotonic() < up + LASTED_S + LASTED_MARGIN_S:
            if not answers(router.http_port, host):
                raise RuntimeError(f"the tunnel stopped answering:\n{listener.log_tail()}")
            time.sleep(0.1)  # a probe interval while the tunnel lasts
        stopped = time.monotonic()
        procs.stop(router_proc)
        ports = [router.ssh_port, router.http_port, router.https_port]
        router_proc = procs.spawn("hostmux-router", router_proc.argv, cwd=code, wait_for=ports)
        listening = time.monotonic()
        back_s = first_answer_s(router.http_port, host, listening, listener)
        rows.append({"down_ms": (listening - stopped) * 1e3, "back_ms": back_s * 1e3})
        say(f"restart {n}: router down {(listening - stopped) * 1e3:.0f} ms, "
            f"first 200 {back_s * 1e3:.0f} ms after it listened")  # fmt: skip
    return {
        "start_ms": start_s * 1e3,
        "restarts": rows,
        "median_back_ms": statistics.median(r["back_ms"] for r in rows),
        "median_down_ms": statistics.median(r["down_ms"] for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=5, help="router restarts (default 5)")
    parser.add_argument(
        "--code", type=Path, default=PROJECT,
        help="run the router and listener from this tree (e.g. a `git archive` of main)",
    )  # fmt: skip
    args = parser.parse_args()
    if not 1 <= args.restarts <= 50:
        parser.error("--restarts: from 1 to 50")
    work = Path(tempfile.mkdtemp(prefix="hostmux-reconnect-"))
    with Processes(work) as procs:
        found = measure(procs, work, args.code.resolve(), args.restarts)
    print()
    print("| restart | router down (SIGTERM -> listening) | first 200 after listening |")
    print("|---|---|---|")
    for n, row in enumerate(found["restarts"], 1):
        print(f"| {n} | {row['down_ms']:.0f} ms | {row['back_ms']:.0f} ms |")
    print(f"| median | {found['median_down_ms']:.0f} ms | {found['median_back_ms']:.0f} ms |")
    print(f"\nlistener start -> first 200: {found['start_ms']:.0f} ms")
    return 0 if found["median_back_ms"] <= GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
