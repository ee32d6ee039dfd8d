"""What the benchmark needs on the machine, installed only when missing (idempotent).

- Debian packages via ``apt-get`` (as root, or with ``sudo``): nginx,
  openssh-server/-client, wrk, curl and iproute2 (``ss``, for the loopback check).
- Python packages via pip into the interpreter running the benchmark
  (matplotlib for the plot, py-spy for the profile).
- The test content the backend serves: ``1k`` (1,024 bytes) and a bulk file of
  random bytes (100 MiB, or 10 MiB in quick mode).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

# A command that must exist -> the Debian package that provides it.
DEBIAN = {
    "/usr/sbin/nginx": "nginx",
    "/usr/sbin/sshd": "openssh-server",
    "/usr/bin/ssh": "openssh-client",
    "/usr/bin/ssh-keygen": "openssh-client",
    "/usr/bin/wrk": "wrk",
    "/usr/bin/curl": "curl",
    "ss": "iproute2",
}

SMALL_NAME = "1k"
SMALL_BODY = (b"hostmux-bench 1KiB body\n" * 64)[:1023] + b"\n"


def _have(command: str) -> bool:
    return Path(command).exists() if command.startswith("/") else shutil.which(command) is not None


def ensure_debian_packages() -> None:
    missing = sorted({pkg for cmd, pkg in DEBIAN.items() if not _have(cmd)})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and shutil.which("sudo") is None:
        sys.exit(f"missing Debian packages {missing}: run as root or install them")
    print(f"[bench] apt-get install {' '.join(missing)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env, timeout=900)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        timeout=1800,
    )


def ensure_pip_package(module: str, requirement: str) -> None:
    """``pip install requirement`` into this interpreter unless ``module`` imports."""
    if importlib.util.find_spec(module) is not None:
        return
    print(f"[bench] pip install {requirement} into {sys.prefix}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", requirement], check=True, timeout=900
    )
    importlib.invalidate_caches()


def py_spy_path() -> str | None:
    """py-spy next to this interpreter (pip puts it in the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def bulk_name(size_bytes: int) -> str:
    return f"{size_bytes >> 20}m"


def ensure_content(www: Path, bulk_bytes: int) -> None:
    """The files the backend nginx serves, written once and reused across runs."""
    www.mkdir(parents=True, exist_ok=True)
    small = www / SMALL_NAME
    if not small.exists() or small.read_bytes() != SMALL_BODY:
        small.write_bytes(SMALL_BODY)
    bulk = www / bulk_name(bulk_bytes)
    if not bulk.exists() or bulk.stat().st_size != bulk_bytes:
        print(f"[bench] writing {bulk_bytes >> 20} MiB of random bytes to {bulk}", flush=True)
        with open(bulk, "wb") as f:
            for _ in range(bulk_bytes >> 20):
                f.write(os.urandom(1 << 20))
