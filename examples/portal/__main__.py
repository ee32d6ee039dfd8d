"""``python -m examples.portal serve``: run the example portal (trio + hypercorn).

State lives in ``--state-dir``: ``portal.sqlite3``, the SSH CA key ``ssh-ca``
and the key that signs revocations, ``signing-key`` (both created on first
run) and, unless given, an ``admin-token`` (0600). Once
listening, exactly one line goes to stdout::

    portal listening on http://127.0.0.1:PORT

SIGINT or SIGTERM stop it with status 0. Bad arguments, a port that is taken
or an unreadable state directory: one line on stderr, status 2.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

import keys

from . import _routers
from ._app import build_app
from ._db import Database
from ._login import hash_password
from ._oauth import redirect_uri_for
from ._state import PortalState

# What an operator can fix (a taken port, an unreadable state dir or CA key, a broken
# database file); anything else is a bug and keeps its traceback.
_STARTUP_ERRORS = (OSError, sqlite3.Error, keys.KeysError)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), still exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse ``type`` from a check that raises ValueError with a message to show."""

    def convert(text: str) -> str:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"port {text!r}: expected 0-65535")
    return int(text)


def _public_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"public URL {text!r}: expected http(s)://HOST[:PORT]")
    return text.rstrip("/")


def _user(text: str) -> str:
    name, colon, _ = text.partition(":")
    if not name or not colon:
        raise ValueError(f"user {name!r}: expected NAME:PASSWORD")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m examples.portal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the portal")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=_port, default=0)
    serve_cmd.add_argument("--state-dir", type=Path, required=True)
    serve_cmd.add_argument(
        "--router",
        action="append",
        default=[],
        type=_checked(_routers.router_address),
        metavar="HOST:PORT",
        help="a router's SSH address for config.json (repeatable)",
    )
    serve_cmd.add_argument(
        "--router-host-key",
        action="append",
        default=[],
        type=_checked(_routers.router_host_key),
        metavar="LINE",
        help="a router's SSH host public key line (repeatable)",
    )
    serve_cmd.add_argument(
        "--router-domain",
        action="append",
        default=[],
        type=_checked(_routers.router_domain),
        metavar="DOMAIN",
        help="a domain the routers serve instances under: only URLs "
        "http(s)://<instance id>.DOMAIN[:port] are accepted (repeatable)",
    )
    serve_cmd.add_argument(
        "--router-ca-file",
        type=Path,
        default=None,
        help="CA certificate(s) of the routers' TLS, for revocation pushes "
        "(default: the system's trust; read at each push)",
    )
    serve_cmd.add_argument("--events-secret", default=os.environ.get("HOSTMUX_EVENTS_SECRET"))
    serve_cmd.add_argument("--admin-token", default=os.environ.get("HOSTMUX_PORTAL_ADMIN_TOKEN"))
    serve_cmd.add_argument(
        "--public-url",
        type=_checked(_public_url),
        default=None,
        help="base URL the portal is reached at (default: http://HOST:PORT)",
    )
    serve_cmd.add_argument(
        "--user",
        action="append",
        default=[],
        type=_checked(_user),
        metavar="NAME:PASSWORD",
        help="create or update a user (repeatable; for demos and tests)",
    )
    return parser


def _secret_file(path: Path) -> str:
    """A random token kept in a 0600 file, created on first use."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def _signing_key(path: Path) -> keys.InstanceKey:
    """The portal's Ed25519 signing key, created (0600) on first use."""
    if not path.exists():
        key = keys.InstanceKey.generate("ed25519")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_pkcs8_pem())
    return keys.InstanceKey.load(path)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than by hypercorn.

    A bind that fails inside hypercorn leaks its socket and surfaces wrapped in
    trio's exception groups; here it is a plain ``OSError`` before anything
    starts. hypercorn takes the descriptor over through an ``fd://`` bind.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _serve(
    args: argparse.Namespace, ca: keys.SshCertificateAuthority, sock: socket.socket
) -> None:
    state_dir: Path = args.state_dir
    db = Database(state_dir / "portal.sqlite3")
    try:
        for spec in args.user:
            name, _, password = spec.partition(":")
            await db.ensure_user(name, hash_password(password))
        if args.router or args.router_host_key:
            routers = {"servers": args.router, "host_keys": args.router_host_key}
            await db.set_setting(_routers.SETTING, routers)
        if args.router_domain:
            await db.set_setting(_routers.DOMAINS_SETTING, args.router_domain)
        state = PortalState(
            db=db,
            ca=ca,
            admin_token=args.admin_token or _secret_file(state_dir / "admin-token"),
            events_secret=args.events_secret.encode() if args.events_secret else None,
            public_url=args.public_url or "",
            redirect_uris={
                i.id: redirect_uri_for(i.url) if i.url else None for i in await db.instances()
            },
            signing_key=_signing_key(state_dir / "signing-key"),
            router_ca_file=args.router_ca_file,
        )
        app = build_app(state, _secret_file(state_dir / "session-secret"))
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here on
        config.accesslog = None  # the portal logs nothing per request
        config.errorlog = "-"  # but an unexpected error in a handler goes to stderr
        config.loglevel = "WARNING"  # (not hypercorn's "Running on ..." line)
        config.graceful_timeout = 2.0  # requests are short; do not hold up a stop
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
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
        with _bind(args.host, args.port) as sock:
            trio.run(_serve, args, ca, sock)
    except _STARTUP_ERRORS as exc:
        print(f"portal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the signal receiver was open: still a clean stop
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
