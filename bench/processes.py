"""Processes the benchmark starts, and only those: spawn, wait for ports, measure, stop.

Rules:

1. Every process is started in its own session with its output in a log file,
   and asks the kernel for SIGTERM if the benchmark itself dies
   (``PR_SET_PDEATHSIG``), so a killed run leaves nothing behind.
2. Processes are stopped by PID only: the process itself, then the children
   seen under it (nginx workers, sshd sessions), each only while it is still
   the same process (same kernel start time) — a reused PID is never hit.
3. ``Processes`` owns what it started; leaving its ``with`` block (normally,
   by Ctrl-C or by an exception) stops everything, newest first.
4. Every wait here is bounded.

Adapted from the side-by-side harness the team uses to compare tunnel routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# How long a process gets between SIGTERM and SIGKILL.
_STOP_GRACE_S = 5.0


def say(message: str) -> None:
    """One progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (guards against PID reuse); None if gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        if start_time(p) is not None:
            found.append(p)
        todo.extend(children.get(p, []))
    return found


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    """One process this benchmark started.

    Resource handling: owned by a ``Processes``; ``stop`` ends it and the
    children seen under it, and closes its log and pipes.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[object],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        pipes: bool = False,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_file = log_dir / f"{name}.log"
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid
        self._seen: dict[int, int | None] = {self.pid: start_time(self.pid)}

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} alive={self.alive()}>"

    @property
    def stdin(self) -> IO[bytes]:
        assert self.popen.stdin is not None, "started without pipes"
        return self.popen.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.popen.stdout is not None, "started without pipes"
        return self.popen.stdout

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        pids = descendants(self.pid) if self.alive() else []
        for p in pids:
            self._seen.setdefault(p, start_time(p))
        return pids

    def rss_kib(self, *, tree: bool = True) -> int:
        """Summed VmRSS of the process (and its children when ``tree``)."""
        return sum(rss_kib(p) for p in self.tree()) if tree else rss_kib(self.pid)

    def cpu_s(self, *, tree: bool = True) -> float:
        """CPU time so far of the process (and of its live children when ``tree``)."""
        return sum(cpu_seconds(p) for p in self.tree()) if tree else cpu_seconds(self.pid)

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self.tree()  # remember children (nginx workers, sshd sessions) before they are orphaned
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(timeout=_STOP_GRACE_S)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=_STOP_GRACE_S)
        deadline = time.monotonic() + _STOP_GRACE_S
        for pid, started in sorted(self._seen.items()):
            if pid == self.pid or started is None:
                continue
            while start_time(pid) == started and time.monotonic() < deadline:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            if start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


class Processes:
    """Everything one part of the run started; stopped together, newest first.

    Resource handling: use as ``with``; leaving the block stops every process.
    Error handling: a process that fails to stop is reported and the rest are
    still stopped.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[Proc] = []

    def __repr__(self) -> str:
        return f"<Processes {[p.name for p in self._procs]}>"

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def spawn(
        self,
        name: str,
        argv: Sequence[object],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        pipes: bool = False,
        wait_for: Sequence[int] = (),
        timeout_s: float = 20.0,
    ) -> Proc:
        """Start ``argv``; with ``wait_for``, return once those loopback ports accept."""
        proc = Proc(name, argv, self.log_dir, env=env, cwd=cwd, pipes=pipes)
        self._procs.append(proc)
        for port in wait_for:
            wait_port(port, timeout_s=timeout_s, proc=proc)
        return proc

    def pids(self) -> set[int]:
        return {pid for p in self._procs for pid in p.tree()}

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self._procs.remove(proc)

    def stop_all(self) -> None:
        while self._procs:
            proc = self._procs.pop()
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the rest
                say(f"stopping {proc.name}: {exc!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, *, timeout_s: float, proc: Proc | None = None) -> None:
    """Return once 127.0.0.1:``port`` accepts; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}) before listening:\n{proc.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} not listening after {timeout_s:g}s")


def non_loopback_listeners(pids: set[int]) -> list[str]:
    """Listening sockets of ``pids`` that are not on loopback (should be none)."""
    out = subprocess.run(
        ["ss", "-H", "-lntup"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    bad = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5 or not any(int(p) in pids for p in re.findall(r"pid=(\d+)", line)):
            continue
        host = parts[4].rsplit(":", 1)[0].strip("[]").split("%")[0]
        if not (host.startswith(("127.", "::ffff:127.")) or host == "::1"):
            bad.append(line.strip())
    return bad


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP end the run alike: every ``Processes`` block stops its own.

    SIGINT is set explicitly because a shell starts background jobs with it ignored.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's open-files limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def stdin_reader() -> asyncio.StreamReader:
    """An ``asyncio.StreamReader`` on stdin: the control pipe of the bench's client processes.

    Read on the event loop (not in a thread), so a timeout or cancellation
    never leaves a thread blocked in ``readline`` at exit.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader
