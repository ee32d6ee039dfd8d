"""Where the router's CPU time goes under small-request load: py-spy, sampled from outside.

``profile_router`` runs wrk through a fresh hostmux + OpenSSH row while
``py-spy record`` samples the router process twice: once as raw collapsed
stacks (summarised here: own time per function, own time per package,
inclusive time of the biggest functions) and once as a flame graph SVG.
py-spy counts only samples where the router was running Python (idle time
in the event loop's ``epoll`` wait is left out), so shares are of busy time.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load import Target

# "function (path/to/file.py:123)" — one frame of py-spy's raw format.
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
TOP = 15


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @property
    def package(self) -> str:
        """The top-level package (or module) of the frame's file.

        py-spy shortens paths relative to ``sys.path``, so the first component
        is the import name: ``asyncssh/channel.py`` -> ``asyncssh``, ``threading.py`` ->
        ``threading``.
        """
        path = self.file.replace("\\", "/")
        if "site-packages/" in path:
            path = path.split("site-packages/", 1)[1]
        first = path.strip("/").split("/", 1)[0]
        return first.removesuffix(".py") or "?"

    def __str__(self) -> str:
        return f"{self.function} ({self.file})"


# Areas of the router's work, for a short summary: (label, [(function prefix, file
# prefix)]); a sample counts for an area if any frame of its stack matches.
AREAS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    # (older py-spy names a method without its class, newer ones with it: the name's
    # last part is matched, and the file tells methods of one name apart)
    ("HTTP parsing: llhttp and its callbacks (`Http1Connection.receive_data`)",
     (("receive_data", "hostmux/http1/connection.py"),)),
    ("HTTP events handed out (`Http1Connection.next_event`)",
     (("next_event", "hostmux/http1/connection.py"),)),
    ("HTTP serialising (`Http1Connection.send`)",
     (("send", "hostmux/http1/connection.py"),)),
    ("the express path, all of it (`hostmux/relay/express.py`)",
     (("", "hostmux/relay/express.py"),)),
    ("the relay's task (`HttpRelay.run`)", (("run", "hostmux/relay/relay.py"),)),
    ("SSH channel writes: asyncssh framing, AES-GCM (`SSHChannel.write`)",
     (("write", "asyncssh/channel.py"),)),
    ("SSH socket sends, one per loop turn (`CoalescingTransport._flush`)",
     (("_flush", "hostmux/tunnel/coalescing.py"),)),
    ("socket writes to the browser (`TransportStream.write`, `StreamWriter.write`)",
     (("write", "hostmux/relay/transport_stream.py"), ("write", "asyncio/streams.py"))),
    ("timeouts: `asyncio.timeout` and `hostmux/relay/deadline.py`",
     (("", "asyncio/timeouts.py"), ("", "hostmux/relay/deadline.py"))),
    ("header rewriting (`hostmux/http1/headers.py`)", (("", "hostmux/http1/headers.py"),)),
    ("routing (`router/tunnels.py`, `routing.py`, `hostmux/names.py`)",
     (("", "router/tunnels.py"), ("", "router/routing.py"), ("", "hostmux/names.py"))),
    ("request records and logging (`hostmux/relay/records.py`, `hostmux/log.py`, `logging`)",
     (("", "hostmux/relay/records.py"), ("", "hostmux/log.py"), ("", "logging/"))),
    ("reading SSH packets: decryption, dispatch (`SSHConnection.data_received`)",
     (("data_received", "asyncssh/connection.py"),)),
)  # fmt: skip

# An executor thread waiting for work (``queue.get`` in C): py-spy counts some of
# its samples as busy under load, but it runs nothing; such samples are dropped.
_IDLE_WORKER = Frame("_worker", "concurrent/futures/thread.py")


def _parse_frame(text: str) -> Frame:
    m = _FRAME.match(text)
    if not m:
        return Frame(text, "?")
    return Frame(m.group("func"), m.group("file"))


def summarise_raw(raw: str) -> dict[str, Any]:
    """Own and inclusive sample counts from py-spy's ``--format raw`` output."""
    own: Counter[Frame] = Counter()
    inclusive: Counter[Frame] = Counter()
    by_package: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = idle_workers = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse_frame(f) for f in stack.split(";")]
        if frames[-1] == _IDLE_WORKER:
            idle_workers += count
            continue
        total += count
        for label, patterns in AREAS:
            if any(
                f.function.rpartition(".")[2].startswith(fn) and path in f.file
                for f in frames
                for fn, path in patterns
            ):
                areas[label] += count
        own[frames[-1]] += count
        by_package[frames[-1].package] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(n: int) -> float:
        return 100.0 * n / total if total else 0.0

    return {
        "samples": total,
        "idle_worker_samples": idle_workers,
        "own": [
            {"function": f.function, "file": f.file, "samples": n, "pct": share(n)}
            for f, n in own.most_common(TOP)
        ],
        "areas": [{"area": label, "pct": share(areas[label])} for label, _ in AREAS],
        "packages": [
            {"package": p, "samples": n, "pct": share(n)} for p, n in by_package.most_common(12)
        ],
        "inclusive": [
            {"function": f.function, "file": f.file, "samples": n, "pct": share(n)}
            for f, n in inclusive.most_common(40)
        ],
    }


def _py_spy(py_spy: str, pid: int, out: Path, fmt: str, duration_s: int) -> str | None:
    """One ``py-spy record``; None if it worked, else its complaint."""
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(duration_s)]
    cmd += ["--rate", "200", "--format", fmt, "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if proc.returncode != 0 or not out.exists():
        return " / ".join((proc.stdout + proc.stderr).strip().splitlines()[:3]) or "no output"
    return None


def profile_router(
    py_spy: str, pid: int, target: Target, svg: Path, work: Path, *, duration_s: int
) -> dict[str, Any]:
    """Sample the router for ``duration_s`` twice (raw, then SVG) under wrk load."""
    raw_file = work / "profile-router.raw"
    wrk_s = 2 * duration_s + 4
    cmd = ["wrk", "-t2", "-c64", f"-d{wrk_s}s", "--latency", "--timeout", "5s"]
    if target.host:
        cmd += ["-H", f"Host: {target.host}"]
    for name, value in target.headers:  # e.g. the auth helper row's session cookie
        cmd += ["-H", f"{name}: {value}"]
    load = subprocess.Popen(
        [*cmd, f"{target.url}/1k"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    result: dict[str, Any] = {"duration_s": duration_s}
    try:
        time.sleep(1.0)  # past wrk's connection set-up
        problem = _py_spy(py_spy, pid, raw_file, "raw", duration_s)
        if problem is None:
            result.update(summarise_raw(raw_file.read_text()))
        else:
            result["error"] = f"py-spy raw: {problem}"
        problem = _py_spy(py_spy, pid, svg, "flamegraph", duration_s)
        result["svg"] = svg.name if problem is None else None
        if problem is not None:
            result.setdefault("error", f"py-spy flamegraph: {problem}")
        out, _ = load.communicate(timeout=wrk_s + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(timeout=10)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["wrk_rps_while_sampled"] = float(m.group(1)) if m else None
    return result
