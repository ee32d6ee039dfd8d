"""``hostmux-router``: the router as a process (``hostmux.process.run_component``)."""

from __future__ import annotations

import contextlib
import gc
import resource
from collections.abc import Sequence

from hostmux.process import run_component
from hostmux.tunnel.ssh_ignore import drop_needless_ignores
from router.config import RouterConfig, load_config
from router.server import run_router

# Net new container objects between collections of the youngest generation
# (Python's default is 700); see ``main``.
_YOUNG_GC_THRESHOLD = 10_000


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one, as nginx's worker_rlimit_nofile
    and Go's runtime do: every tunnel and browser connection is a file, and the
    usual soft default (1,024) would cap a router near a thousand tunnels."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # (an infinite hard limit above the kernel's nr_open is refused: keep the soft one)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: Sequence[str] | None = None) -> int:
    return run_component(
        "hostmux-router", argv, load=load_config, main=run_router, prepare=_tune_process
    )


def _tune_process(_: RouterConfig) -> None:
    raise_open_files_limit()
    drop_needless_ignores()
    # What is loaded by now (the modules: asyncssh, cryptography, httptools...) lives as
    # long as the process: keep it out of the collector's full scans, which took
    # ~20 ms of CPU each under load without this (a request waits behind one).
    gc.freeze()
    # A request allocates and frees many small objects; with the default 700 the
    # young generation was collected every few ms, its survivors (live
    # connections) scanned each time: gc was 1.6% of the CPU, 0.2% with 10,000.
    gc.set_threshold(_YOUNG_GC_THRESHOLD)
