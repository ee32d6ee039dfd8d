"""``hostmux-router``: the router as a process (``hostmux.process.run_component``).

With ``workers`` other than 1 the process is the workers' supervisor
(``router.workers.supervisor``), which starts the routers; a worker (started
with ``--worker-index N``) and a plain router run ``router.server``. The
server and the supervisor are imported only once that choice is made: the
supervisor never loads asyncssh. ``hostmux-router tunnels`` (``kick``, ``block``,
``unblock``, ``blocks``, ``drain``) is a client of a running router's admin API.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import signal
import sys
from collections.abc import Sequence

from hostmux.config.layered import ConfigError
from hostmux.config.show import config_toml
from hostmux.log import set_log_context
from hostmux.process import run_component
from router.config import RouterConfig, load_config

# Commands that call a running router's admin API (``router.admin.client``).
ADMIN_COMMANDS = ("tunnels", "kick", "block", "unblock", "blocks", "drain")
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
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["check-config"]:
        return check_config(args[1:])
    if args and args[0] in ADMIN_COMMANDS:  # a client of a running router's admin API
        from router.admin.client import main as admin_client

        return admin_client(args)
    # A reload asked for while the router starts is one it has not read its files for yet:
    # ignored until the router's own handler is in place (router.server), not an end.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def run(config: RouterConfig) -> None:
        if is_supervisor(config):
            from router.workers.supervisor import run_supervisor

            await run_supervisor(config, args)
        else:
            from router.server import run_router

            await run_router(config, reload=lambda: load_config(args))

    return run_component("hostmux-router", args, load=load_config, main=run, prepare=_tune_process)


def check_config(argv: Sequence[str]) -> int:
    """``hostmux-router check-config [options]``: load the configuration as the router
    would (file, environment, flags), check the files it names without creating
    anything, and print it (secrets masked); one line and exit 2 when it is wrong."""
    prog = "hostmux-router check-config"
    try:
        config = load_config(argv, prog=prog)
        from router.server import check_files  # loads asyncssh: not for the plain --help

        check_files(config)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(config_toml(config))
    return 0


def is_supervisor(config: RouterConfig) -> bool:
    """This process starts workers (``workers`` other than 1) rather than being one."""
    return config.workers != 1 and config.worker_index == 0


def _tune_process(config: RouterConfig) -> None:
    if is_supervisor(config):
        # Its lines interleave with its workers' on the stderr they share.
        set_log_context(shared_stream=True, worker="supervisor")
        return
    if config.worker_index:
        set_log_context(shared_stream=True, worker=config.worker_index)
    from hostmux.tunnel.ssh_ignore import drop_needless_ignores

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
