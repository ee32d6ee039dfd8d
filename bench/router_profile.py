"""Where the router's CPU time goes under small-request load: py-spy, sampled from outside.

``profile_router`` runs wrk through a fresh hostmux + OpenSSH row while
``py-spy record`` samples the router process twice: once as raw collapsed
stacks (summarised here: own time per function, own time per package,
inclusive time of the biggest functions) and once as a flame graph SVG.
py-spy counts only samples where the router was running Python (idle time
in the event loop's ``epoll`` wait is left out), so shares are of busy time.

With the compiled core (``hostmux.compiled``) the relay and the HTTP core run
as C: py-spy then samples with ``--native``, so the stacks show C frames
(mypyc's, llhttp's, uvloop's, the system calls'); mypyc's frames are named
back to the Python functions they were compiled from, so the areas still
match, and ``kinds`` splits the busy time by what ran: system calls, the
compiled core, our Python, asyncssh, cryptography, the interpreter.
Unwinding native stacks costs py-spy more per sample, so the process runs
slower while it is sampled (``wrk_rps_while_sampled``); shares stay comparable.
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

from hostmux.compiled import COMPILED, core_build

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
        path = self.file.partition(":")[0].replace("\\", "/")
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

# What ran, by the frame a sample ended in (its own time): (label, test), first
# match wins. System calls are libc's wrappers; the rest go by file or library.
_SYSCALLS = frozenset(
    ("write", "read", "writev", "readv", "send", "recv", "sendmsg", "recvmsg", "sendto",
     "recvfrom", "epoll_wait", "epoll_pwait", "epoll_ctl", "getrandom", "close", "accept4")
)  # fmt: skip
KINDS: tuple[str, ...] = (
    "system calls (socket reads and writes, epoll)",
    "the compiled core (mypyc's code for hostmux.http1 and hostmux.relay, its runtime)",
    "llhttp (httptools)",
    "uvloop (its C event loop)",
    "asyncssh (Python)",
    "cryptography (AES-GCM, in C)",
    "our Python (router, authhelper, hostmux)",
    "the interpreter (reference counts, allocation, the eval loop, dataclasses' __init__)",
    "other",
)


# mypyc's runtime, which its compiled code calls (``lib-rt``), and libuv's files
# inside uvloop.
_MYPYC_RUNTIME = frozenset(
    ("CPy.h", "dict_ops.c", "int_ops.c", "bytes_ops.c", "list_ops.c", "str_ops.c",
     "generic_ops.c", "misc_ops.c", "exc_ops.c", "set_ops.c", "tuple_ops.c", "getargs.c",
     "getargsfast.c", "init.c", "pythonsupport.h", "pythonsupport.c", "pythoncapi_compat.h",
     "mypyc_util.h")
)  # fmt: skip
_LIBUV = frozenset(("loop.c", "core.c", "stream.c", "epoll.c", "linux.c", "uv-common.c", "timer.c"))
_LLHTTP = frozenset(("parser.c", "url_parser.c", "llhttp.c", "api.c", "http.c"))


def _kind(frame: Frame) -> str:
    """Which of ``KINDS`` a sample that ended in ``frame`` spent its time in."""
    file, package = frame.file.partition(":")[0], frame.package
    if package.startswith("libc.so") and frame.function in _SYSCALLS:
        return KINDS[0]
    if file.startswith("__native_") or file in _MYPYC_RUNTIME:
        return KINDS[1]
    if file in _LLHTTP:
        return KINDS[2]
    if file in _LIBUV:
        return KINDS[3]
    if package == "asyncssh":
        return KINDS[4]
    if package == "cryptography" or package.startswith(("libcrypto", "_rust")):
        return KINDS[5]
    if package in ("router", "authhelper", "hostmux", "listener"):
        return KINDS[6]
    if file.endswith((".c", ".h")) or package.startswith(("libpython", "libc.so", "<string>")):
        return KINDS[7]
    return KINDS[8]


# An executor thread waiting for work (``queue.get`` in C): py-spy counts some of
# its samples as busy under load, but it runs nothing; such samples are dropped
# (with ``--native``, the stack ends in C below this frame).
_IDLE_WORKER = Frame("_worker", "concurrent/futures/thread.py")

# mypyc's C function for a compiled function: ``CPyDef_<module>___<Class>___<name>``
# (``CPyPy_`` for its Python-callable wrapper), ``<module>`` the last part of the
# module's name.
_NATIVE = re.compile(r"^CPy(?:Def|Py)_(?P<name>.+)$")
_COMPILED_FILES = {name.rpartition(".")[2]: name.replace(".", "/") + ".py" for name in COMPILED}


def _parse_frame(text: str) -> Frame:
    m = _FRAME.match(text)
    if not m:
        return Frame(text, "?")
    function, file = m.group("func"), m.group("file")
    native = _NATIVE.match(function)
    if native and file.startswith("__native_"):
        module, _, name = native.group("name").partition("___")
        if module in _COMPILED_FILES and name:
            # Named back to what it was compiled from; the file keeps it native.
            return Frame(name.replace("___", "."), f"{file}:{_COMPILED_FILES[module]}")
    return Frame(function, file)


def _idle(frames: list[Frame]) -> bool:
    """An idle executor thread: its ``_worker`` frame with no Python frame below it."""
    if _IDLE_WORKER not in frames:
        return False
    below = frames[frames.index(_IDLE_WORKER) + 1 :]
    return not any(f.file.partition(":")[0].endswith(".py") for f in below)


def summarise_raw(raw: str) -> dict[str, Any]:
    """Own and inclusive sample counts from py-spy's ``--format raw`` output."""
    own: Counter[Frame] = Counter()
    inclusive: Counter[Frame] = Counter()
    by_package: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    total = idle_workers = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse_frame(f) for f in stack.split(";")]
        if _idle(frames):
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
        kinds[_kind(frames[-1])] += count
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
        "kinds": [{"kind": label, "pct": share(kinds[label])} for label in KINDS if kinds[label]],
        "packages": [
            {"package": p, "samples": n, "pct": share(n)} for p, n in by_package.most_common(12)
        ],
        "inclusive": [
            {"function": f.function, "file": f.file, "samples": n, "pct": share(n)}
            for f, n in inclusive.most_common(40)
        ],
    }


def _py_spy(
    py_spy: str, pid: int, out: Path, fmt: str, duration_s: int, *, native: bool
) -> str | None:
    """One ``py-spy record``; None if it worked, else its complaint."""
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(duration_s)]
    cmd += ["--rate", "200", "--format", fmt, "-o", str(out)]
    if native:
        cmd.append("--native")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if proc.returncode != 0 or not out.exists():
        return " / ".join((proc.stdout + proc.stderr).strip().splitlines()[:3]) or "no output"
    return None


def profile_router(
    py_spy: str, pid: int, target: Target, svg: Path, work: Path, *, duration_s: int
) -> dict[str, Any]:
    """Sample the router for ``duration_s`` twice (raw, then SVG) under wrk load.

    Native stacks (``--native``) when the installed core is compiled.
    """
    native = core_build() == "compiled"
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
    result: dict[str, Any] = {"duration_s": duration_s, "native": native}
    try:
        time.sleep(1.0)  # past wrk's connection set-up
        problem = _py_spy(py_spy, pid, raw_file, "raw", duration_s, native=native)
        if problem is None:
            result.update(summarise_raw(raw_file.read_text()))
        else:
            result["error"] = f"py-spy raw: {problem}"
        problem = _py_spy(py_spy, pid, svg, "flamegraph", duration_s, native=native)
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
