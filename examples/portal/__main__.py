"""``python -m examples.portal serve``: run the example portal (trio + hypercorn).

State lives in ``--state-dir``: ``portal.sqlite3``, the SSH CA key ``ssh-ca``
(created on first run) and, unless given, an ``admin-token`` (0600). Once
listening, exactly one line goes to stdout::

    portal listening on http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

import keys

from ._app import build_app
from ._db import Database
from ._login import hash_password
from ._state import PortalState


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.portal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the portal")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=0)
    serve_cmd.add_argument("--state-dir", type=Path, required=True)
    serve_cmd.add_argument(
        "--router",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a router's SSH address for config.json (repeatable)",
    )
    serve_cmd.add_argument(
        "--router-host-key",
        action="append",
        default=[],
        metavar="LINE",
        help="a router's SSH host public key line (repeatable)",
    )
    serve_cmd.add_argument("--events-secret", default=os.environ.get("HOSTMUX_EVENTS_SECRET"))
    serve_cmd.add_argument("--admin-token", default=os.environ.get("HOSTMUX_PORTAL_ADMIN_TOKEN"))
    serve_cmd.add_argument("--public-url", default="", help="base URL the portal is reached at")
    serve_cmd.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="create or update a user (repeatable; for demos and tests)",
    )
    return parser


def _session_secret(state_dir: Path) -> str:
    """The key signing the portal's login cookie; kept so a restart keeps logins."""
    path = state_dir / "session-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def _admin_token(state_dir: Path, given: str | None) -> str:
    if given:
        return given
    path = state_dir / "admin-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


async def _serve(args: argparse.Namespace, ca: keys.SshCertificateAuthority) -> None:
    state_dir: Path = args.state_dir
    db = Database(state_dir / "portal.sqlite3")
    for spec in args.user:
        name, _, password = spec.partition(":")
        await db.ensure_user(name, hash_password(password))
    if args.router or args.router_host_key:
        await db.set_setting("routers", {"servers": args.router, "host_keys": args.router_host_key})
    state = PortalState(
        db=db,
        ca=ca,
        admin_token=_admin_token(state_dir, args.admin_token),
        events_secret=args.events_secret.encode() if args.events_secret else None,
        public_url=args.public_url.rstrip("/"),
        instance_ids={i.id for i in await db.instances()},
    )
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.errorlog = None  # errors surface as 500s; the portal logs nothing per request
    config.graceful_timeout = 2.0
    try:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                app = build_app(state, _session_secret(state_dir))
                binds = await nursery.start(serve, app, config)
                print(f"portal listening on {binds[0]}", flush=True)
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    finally:
        db.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        args.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca, _ = keys.load_or_create_ssh_ca(args.state_dir / "ssh-ca")
        trio.run(_serve, args, ca)
    except (OSError, keys.KeysError) as exc:
        print(f"portal: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
