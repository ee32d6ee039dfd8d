"""``hostmux-authhelper``: the OAuth2 gate in front of an instance's app."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

from hostmux.config.layered import ConfigError
from hostmux.log import configure_logging
from hostmux.process import run_event_loop

from ._config import load_config
from ._server import run_authhelper


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"hostmux-authhelper: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run_event_loop(run_authhelper(config))
    except ConfigError as exc:
        print(f"hostmux-authhelper: error: {exc}", file=sys.stderr)
        return 2
    return 0
