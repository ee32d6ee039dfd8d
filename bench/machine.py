"""Facts about the machine and the software a result was measured with."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

from rows import PROJECT


def _first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (p.stdout + p.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    return _first_line(["git", "-C", str(PROJECT), *args])


def machine_facts(rev: str | None = None, code: Path | None = None) -> dict[str, Any]:
    """Hardware, OS, tool and library versions; the product's commit (``rev`` if given).

    With ``code`` (an unpacked tree, where there may be no git): the line in its
    ``REVISION`` file, if it has one.
    """
    if rev:
        commit = _git("rev-parse", "--short", rev) + f" ({rev}, a snapshot)"
    elif code is not None:
        label = code / "REVISION"
        commit = label.read_text().strip() if label.is_file() else f"the files in {code}"
    else:
        try:
            dirty = subprocess.run(
                ["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=20, check=False,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):  # no git (a copy of the tree)
            dirty = ""
        commit = _git("rev-parse", "--short", "HEAD") + (
            " + uncommitted changes in the working tree" if dirty else ""
        )
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(_memory_gib(), 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostmux_commit": commit,
        "asyncssh": _version("asyncssh"),
        "h11": _version("h11"),
        "httptools": _version("httptools"),
        "uvloop": _version("uvloop"),
        "cryptography": _version("cryptography"),
        "nginx": _first_line(["/usr/sbin/nginx", "-v"]),
        "openssh": _first_line(["ssh", "-V"]),
        "wrk": _first_line(["wrk", "-v"]),
        "curl": _first_line(["curl", "--version"]),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "load_average_start": os.getloadavg(),
    }
