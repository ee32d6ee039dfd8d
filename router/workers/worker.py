"""A worker's side of ``workers = N``: its watch on the supervisor that started it.

``router.server`` serves the sockets named in ``listen_fds`` (see
``router.workers.sockets.adopt``) instead of binding, and runs
``end_with_supervisor`` beside its other tasks: a worker whose supervisor is
gone (killed with ``-9``, so it passed no signal on) would otherwise keep
serving on ports nobody manages, and a new supervisor could not bind them.
The supervisor's end is an event, not a poll: a pidfd (Linux 5.3+) becomes
readable when its process exits.
"""

from __future__ import annotations

import asyncio
import logging
import os

from hostmux.log import describe, fields

log = logging.getLogger("hostmux.router")

# The parent at import (the router's start), before anything could have changed it.
STARTED_BY = os.getppid()


async def end_with_supervisor(stop: asyncio.Event) -> None:
    """Set ``stop`` (a graceful shutdown) once the process that started this worker is gone."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    try:
        pidfd = os.pidfd_open(STARTED_BY)
    except ProcessLookupError:
        pidfd = None
    except (AttributeError, OSError) as exc:  # not Linux 5.3+: serve on, unwatched
        log.warning(fields("supervisor_watch_unavailable", reason=describe(exc)))
        return
    try:
        if pidfd is not None:
            loop.add_reader(pidfd, gone.set)
        if pidfd is None or os.getppid() != STARTED_BY:  # gone before the watch began
            gone.set()
        await gone.wait()
    finally:
        if pidfd is not None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    log.warning(fields("supervisor_gone", supervisor_pid=STARTED_BY, action="stopping"))
    stop.set()
