"""A component's process: the one ``main()`` of the router, the listener and the auth helper.

Each component's CLI is ``run_component`` with its own loader, checks and
main coroutine. The rules it keeps for all three:

1. A configuration fault — from the loader, from ``check`` or raised by the
   main coroutine as ``ConfigError`` before it serves — is one line,
   ``PROG: error: ...``, and exit status 2. Never a traceback.
2. Logging is configured once the config is known, before anything runs.
3. The main coroutine runs on uvloop when it is installed (measured faster),
   else on asyncio. Ctrl-C ends it quietly (exit 0): the coroutines install
   their own SIGINT/SIGTERM handlers for a graceful stop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from hostmux.config.layered import ConfigError
from hostmux.log import configure_logging


class _Configured(Protocol):
    @property
    def log_level(self) -> str: ...
    @property
    def log_format(self) -> str: ...


C = TypeVar("C", bound=_Configured)


def run_component(
    prog: str,
    argv: Sequence[str] | None,
    *,
    load: Callable[[Sequence[str] | None], C],
    main: Callable[[C], Coroutine[Any, Any, None]],
    check: Callable[[C], str | None] = lambda _: None,
    prepare: Callable[[C], None] = lambda _: None,
) -> int:
    """Load the config, check it, prepare the process, run ``main``; the exit status.

    ``check`` returns a one-line problem (refused with exit 2) or None;
    ``prepare`` tunes the process once logging is set up (limits, gc, patches).
    """
    try:
        config = load(argv)
        problem = check(config)
    except ConfigError as exc:
        problem = str(exc)
    if problem is not None:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    prepare(config)
    try:
        run_event_loop(main(config))
    except ConfigError as exc:  # found while starting, before serving (a port in use...)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop when installed (measured faster), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
