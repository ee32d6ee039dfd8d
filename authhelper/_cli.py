"""``hostmux-authhelper``: the OAuth2 gate in front of an instance's app."""

from __future__ import annotations

from collections.abc import Sequence

from hostmux.process import run_component

from ._config import load_config
from ._server import run_authhelper


def main(argv: Sequence[str] | None = None) -> int:
    return run_component("hostmux-authhelper", argv, load=load_config, main=run_authhelper)
