"""``hostmux-listener``: hold a tunnel from a router to a local app."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

from hostmux.log import configure_logging
from hostmux.process import run_event_loop
from hostmux.tunnel.ssh_ignore import drop_needless_ignores

from ._config import ConfigError, load_config
from ._run import run_listener
from ._ssh_client import identity_problem


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["connect"]:  # the ProxyCommand helper: stdin/stdout over WebSocket
        from ._connect import main as connect_main

        return connect_main(args[1:])
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"hostmux-listener: error: {exc}", file=sys.stderr)
        return 2
    if not config.identity_file.is_file():
        print(f"hostmux-listener: error: no private key at {config.identity_file}", file=sys.stderr)
        return 2
    if (problem := identity_problem(config.identity_file)) is not None:
        print(f"hostmux-listener: error: identity_file: {problem}", file=sys.stderr)
        return 2
    if config.uri_update_url:
        import keys  # portal mode only: the JWT stack is slow to import

        try:
            keys.InstanceKey.load(config.identity_file)
        except keys.KeysError as exc:
            print(f"hostmux-listener: error: {exc}", file=sys.stderr)
            return 2
    configure_logging(config.log_level)
    drop_needless_ignores()
    with contextlib.suppress(KeyboardInterrupt):
        run_event_loop(run_listener(config))
    return 0
