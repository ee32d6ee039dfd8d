"""``hostmux-listener``: hold a tunnel from a router to a local app."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hostmux.process import run_component
from hostmux.tunnel.ssh_ignore import drop_needless_ignores

from ._config import ListenerConfig, load_config
from ._run import run_listener
from ._ssh_client import identity_problem


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["connect"]:  # the ProxyCommand helper: stdin/stdout over WebSocket
        from ._connect import main as connect_main

        return connect_main(args[1:])
    return run_component(
        "hostmux-listener", argv, load=load_config, main=run_listener,
        check=_identity_problem, prepare=lambda _: drop_needless_ignores(),
    )  # fmt: skip


def _identity_problem(config: ListenerConfig) -> str | None:
    """Why the listener cannot use its key (one line), or None."""
    try:
        # (is_file() raises for what it cannot look at: a directory it may not search, as
        # for a systemd credential the service's user cannot read, or a name too long)
        found = config.identity_file.is_file()
    except OSError as exc:
        return f"identity_file: {config.identity_file}: {exc.strerror or exc}"
    if not found:
        return f"no private key at {config.identity_file}"
    if (problem := identity_problem(config.identity_file)) is not None:
        return f"identity_file: {problem}"
    if config.certificate_file is not None:
        from ._certificate import CertificateError, read_validity

        try:
            read_validity(config.certificate_file)
        except CertificateError as exc:
            return f"certificate_file: {exc}"
    if config.uri_update_url or config.renewal_url:
        import keys  # portal mode only: the JWT stack is slow to import

        try:
            keys.InstanceKey.load(config.identity_file)
        except keys.KeysError as exc:
            return str(exc)
    return None
