"""``hostmux-authhelper``: the OAuth2 gate in front of an instance's app."""

from __future__ import annotations

import gc
from collections.abc import Sequence

from hostmux.process import run_component

from ._config import AuthHelperConfig, load_config
from ._server import run_authhelper

# The router's young-generation threshold, for the same relay's same reason (router/cli.py).
_YOUNG_GC_THRESHOLD = 10_000


def _tune_process(config: AuthHelperConfig) -> None:
    # As the router: what is loaded by now lives as long as the process (out of the
    # collector's full scans), and a request's many short-lived objects would
    # otherwise trigger a young collection every few requests.
    gc.freeze()
    gc.set_threshold(_YOUNG_GC_THRESHOLD)


def main(argv: Sequence[str] | None = None) -> int:
    return run_component(
        "hostmux-authhelper", argv, load=load_config, main=run_authhelper, prepare=_tune_process
    )
