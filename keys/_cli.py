"""``hostmux-keys``: make and inspect the keys and certificates hostmux uses.

Subcommands::

    hostmux-keys keypair [-t ed25519|rsa] [-b BITS] [-C COMMENT] [-f] PATH
    hostmux-keys host-key PATH
    hostmux-keys dev-ca [--dir DIR] [--domain DOMAIN] [--name NAME ...]
    hostmux-keys fingerprint FILE

Results go to stdout. Every failure, including a usage error, is one line on
stderr, ``hostmux-keys: error: ...``, with exit status 2 and no traceback:
the errors are about files the user named, and a stack trace would bury the
one fact that matters.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ._dev_ca import ensure_dev_tls
from ._errors import KeyFileError, KeysError
from ._files import read_key_file
from ._keypairs import (
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    PublicKeyLine,
    generate_keypair,
    iter_public_lines,
    load_keypair,
    load_or_create_host_key,
    parse_public_line,
    write_keypair,
)

# Named in every message, whether run as a console script or `python -m keys`.
_PROG = "hostmux-keys"

# Exit status for every failure, as argparse uses for usage errors.
_EXIT_ERROR = 2


def _default_dev_ca_dir() -> Path:
    # The router's default state_dir + "/tls", so `dev-ca` shows the CA it serves.
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "hostmux" / "tls"


class _UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so main() reports it."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hostmux-keys`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        command: str = args.command
        if command == "keypair":
            _keypair(args)
        elif command == "host-key":
            _host_key(args)
        elif command == "dev-ca":
            _dev_ca(args)
        else:
            _fingerprint(args)
    except (_UsageError, KeysError) as error:
        print(f"{_PROG}: error: {error}", file=sys.stderr)
        return _EXIT_ERROR
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=_PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keypair = commands.add_parser("keypair", help="generate an SSH key pair: PATH and PATH.pub")
    keypair.add_argument("-t", dest="algorithm", choices=("ed25519", "rsa"), default="ed25519")
    keypair.add_argument(
        "-b", dest="bits", type=int, help=f"RSA key size, {MIN_RSA_BITS}..{MAX_RSA_BITS}"
    )
    keypair.add_argument("-C", dest="comment", default="", help="comment for the public key")
    keypair.add_argument("-f", dest="force", action="store_true", help="overwrite existing files")
    keypair.add_argument("path", metavar="PATH", type=Path)

    host_key = commands.add_parser("host-key", help="load or create the router's host key")
    host_key.add_argument("path", metavar="PATH", type=Path)

    dev_ca = commands.add_parser("dev-ca", help="create a development CA and TLS certificate")
    dev_ca.add_argument(
        "--dir", dest="directory", type=Path,
        help="where the files live (default: $XDG_STATE_HOME/hostmux/tls, as the router)",
    )  # fmt: skip
    dev_ca.add_argument("--domain", default="localhost")
    dev_ca.add_argument(
        "--name", dest="extra_names", action="append", default=[], metavar="NAME",
        help="another DNS name or IP address for the certificate (repeatable)",
    )  # fmt: skip

    fingerprint = commands.add_parser(
        "fingerprint", help="print SHA256 fingerprints of the keys in a file"
    )
    fingerprint.add_argument("file", metavar="FILE", type=Path)
    return parser


def _keypair(args: argparse.Namespace) -> None:
    path: Path = args.path
    if args.bits is not None and args.algorithm != "rsa":
        raise _UsageError("-b applies to -t rsa only")
    # Absent -b leaves the size to generate_keypair's default.
    bits: dict[str, int] = {} if args.bits is None else {"rsa_bits": args.bits}
    public_path = path.with_name(path.name + ".pub")
    if not args.force:
        for existing in (path, public_path):
            if existing.exists():
                raise KeyFileError(f"{existing} already exists (use -f to overwrite)")
    try:
        pair = generate_keypair(args.algorithm, comment=args.comment, **bits)
    except ValueError as error:  # generate_keypair's word on -b and -C values
        raise _UsageError(str(error)) from error
    write_keypair(pair, path)
    print(pair.public_openssh)
    print(f"{pair.fingerprint} written to {path} and {public_path}")


def _host_key(args: argparse.Namespace) -> None:
    path: Path = args.path
    pair, created = load_or_create_host_key(path)
    print(pair.public_openssh)
    print(f"{pair.fingerprint} {'created' if created else 'existing'} host key {path}")


def _dev_ca(args: argparse.Namespace) -> None:
    directory: Path = args.directory or _default_dev_ca_dir()
    files, created = ensure_dev_tls(directory, args.domain, extra_names=args.extra_names)
    print(f"{'created' if created else 'up to date'}:")
    print(f"  certificate  {files.cert}")
    print(f"  key          {files.key}")
    print(f"  CA           {files.ca_cert}")
    print(f"trust {files.ca_cert} in your browser, or: curl --cacert {files.ca_cert} ...")
    if "." not in args.domain.strip(".") and not args.extra_names:
        print(
            f"note: clients ignore the wildcard *.{args.domain}; use --domain "
            f"hostmux.{args.domain} or --name app.{args.domain} for subdomains"
        )


def _fingerprint(args: argparse.Namespace) -> None:
    path: Path = args.file
    data = read_key_file(path, "key file")
    if b"PRIVATE KEY-----" in data:
        pair = load_keypair(path)
        print(_describe(parse_public_line(pair.public_openssh)))
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise KeyFileError(f"{path} is neither a private key nor a list of public keys") from error
    keys: list[PublicKeyLine] = []
    for number, line in iter_public_lines(text):
        try:
            keys.append(parse_public_line(line))
        except KeyFileError as error:
            raise KeyFileError(f"{path}:{number}: {error}") from error
    if not keys:
        raise KeyFileError(f"{path} holds no keys")
    for key in keys:
        print(_describe(key))


def _describe(key: PublicKeyLine) -> str:
    return " ".join(part for part in (key.fingerprint, key.key_type, key.comment) if part)
