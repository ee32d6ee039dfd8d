"""``hostmux-keys``: make and inspect the keys and certificates hostmux uses.

Subcommands::

    hostmux-keys keypair [-t ed25519|rsa] [-b BITS] [-C COMMENT] [-f] PATH
    hostmux-keys host-key PATH
    hostmux-keys dev-ca [--dir DIR] [--domain DOMAIN] [--name NAME ...]
    hostmux-keys fingerprint FILE
    hostmux-keys instance-key [-t rsa|ed25519] [-b BITS] DIR
    hostmux-keys jwt --key PEMFILE --iss ISS [--kid KID] [--lifetime S]
    hostmux-keys ssh-ca init PATH
    hostmux-keys ssh-ca sign --ca PATH --principal ID [--principal ...]
                             --key-id ID --valid-for SECONDS PUBKEYFILE
    hostmux-keys cluster-ca init [--force] DIR
    hostmux-keys cluster-ca issue [--out OUTDIR] [--days N] DIR ROUTER_ID

``cluster-ca init`` writes ``DIR/ca.crt`` and ``DIR/ca.key`` and refuses to
replace an existing CA without ``--force``; ``cluster-ca issue`` writes
``ROUTER_ID.crt`` and ``ROUTER_ID.key`` into OUTDIR (default: DIR), replacing
an earlier certificate for the same router (that is how one renews it).

``instance-key`` writes ``instance-key.pem`` (PKCS#1 for RSA, as DIT4C's
listener reads it; PKCS#8 for Ed25519, which PKCS#1 cannot hold),
``instance-key.pub`` and ``instance-key.jwk.json``, and never replaces an
existing key.

Results go to stdout. Every failure, including a usage error, is one line on
stderr, ``hostmux-keys: error: ...``, with exit status 2 and no traceback:
the errors are about files the user named, and a stack trace would bury the
one fact that matters.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ._cluster_ca import CA_CERT_NAME, CA_KEY_NAME, ROUTER_CERT_VALIDITY, ClusterCA
from ._dev_ca import ensure_dev_tls
from ._errors import KeyFileError, KeysError
from ._files import read_key_file, write_key_file
from ._instance import (
    MAX_INSTANCE_RSA_BITS,
    MIN_INSTANCE_RSA_BITS,
    InstanceKey,
    instance_public_key_from_openssh,
)
from ._jwt import sign_jwt
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
from ._ssh_ca import SshCertificateAuthority, load_or_create_ssh_ca

# Named in every message, whether run as a console script or `python -m keys`.
_PROG = "hostmux-keys"

# Exit status for every failure, as argparse uses for usage errors.
_EXIT_ERROR = 2

# The files `instance-key` writes into its DIR (names the portal docs use).
_INSTANCE_PEM = "instance-key.pem"
_INSTANCE_PUB = "instance-key.pub"
_INSTANCE_JWK = "instance-key.jwk.json"

# `ssh-ca sign` backdates a certificate this much, so a router whose clock is
# a little behind the signer's does not find it not yet valid.
_CLOCK_SKEW = datetime.timedelta(minutes=1)

# `cluster-ca issue --days`: at least a day; at most the CA's own ten years.
_MAX_ROUTER_CERT_DAYS = 3650


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
        elif command == "instance-key":
            _instance_key(args)
        elif command == "jwt":
            _jwt(args)
        elif command == "ssh-ca":
            _ssh_ca(args)
        elif command == "cluster-ca":
            _cluster_ca(args)
        else:
            _fingerprint(args)
    except (_UsageError, KeysError) as error:
        print(f"{_PROG}: error: {error}", file=sys.stderr)
        return _EXIT_ERROR
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("hostmux")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


def _build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=_PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"{_PROG} {_version()}")
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

    instance = commands.add_parser(
        "instance-key", help="make an instance key: PEM, OpenSSH public key and JWK in DIR"
    )
    instance.add_argument("-t", dest="algorithm", choices=("rsa", "ed25519"), default="rsa")
    instance.add_argument(
        "-b", dest="bits", type=int,
        help=f"RSA key size, {MIN_INSTANCE_RSA_BITS}..{MAX_INSTANCE_RSA_BITS} (default 2048)",
    )  # fmt: skip
    instance.add_argument("directory", metavar="DIR", type=Path)

    token = commands.add_parser("jwt", help="print a JWT signed by an instance key")
    token.add_argument("--key", required=True, type=Path, help="the instance's private key")
    token.add_argument("--iss", required=True, help="issuer: the instance id")
    token.add_argument("--kid", help="key id (default: the key's RFC 7638 thumbprint)")
    token.add_argument("--lifetime", type=int, default=300, help="seconds (default 300)")

    ssh_ca = commands.add_parser("ssh-ca", help="an OpenSSH user-certificate authority")
    ca_commands = ssh_ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    ca_init = ca_commands.add_parser("init", help="create the CA key (PATH, PATH.pub)")
    ca_init.add_argument("path", metavar="PATH", type=Path)
    ca_sign = ca_commands.add_parser("sign", help="sign a user key; prints the certificate")
    ca_sign.add_argument("--ca", required=True, type=Path)
    ca_sign.add_argument("--principal", action="append", required=True, help="repeatable")
    ca_sign.add_argument("--key-id", required=True)
    ca_sign.add_argument("--valid-for", type=int, required=True, metavar="SECONDS")
    ca_sign.add_argument("public_key", metavar="PUBKEYFILE", type=Path)

    cluster = commands.add_parser(
        "cluster-ca", help="the cluster CA for mutual TLS between routers"
    )
    cluster_commands = cluster.add_subparsers(
        dest="cluster_command", required=True, metavar="ACTION"
    )
    cluster_init = cluster_commands.add_parser(
        "init", help=f"create the cluster CA: DIR/{CA_CERT_NAME}, DIR/{CA_KEY_NAME}"
    )
    cluster_init.add_argument(
        "--force", action="store_true",
        help="replace an existing CA (every router certificate must then be issued again)",
    )  # fmt: skip
    cluster_init.add_argument("directory", metavar="DIR", type=Path)
    cluster_issue = cluster_commands.add_parser(
        "issue", help="issue ROUTER_ID.crt and ROUTER_ID.key, signed by DIR's CA"
    )
    cluster_issue.add_argument("directory", metavar="DIR", type=Path)
    cluster_issue.add_argument("router_id", metavar="ROUTER_ID")
    cluster_issue.add_argument(
        "--out", dest="out_dir", type=Path, metavar="OUTDIR", help="default: DIR"
    )
    cluster_issue.add_argument(
        "--days", type=int, default=ROUTER_CERT_VALIDITY.days,
        help=f"validity in days, 1..{_MAX_ROUTER_CERT_DAYS} (default {ROUTER_CERT_VALIDITY.days})",
    )  # fmt: skip
    return parser


def _cluster_ca(args: argparse.Namespace) -> None:
    directory: Path = args.directory
    if args.cluster_command == "init":
        ca = ClusterCA.init(directory, force=args.force)
        print(f"created {ca.certificate.subject.rfc4514_string()}:")
        print(f"  certificate  {ca.ca_file}   (cluster_ca_file on every router)")
        print(f"  key          {directory / CA_KEY_NAME}   (keep it off the routers)")
        print(f"next: {_PROG} cluster-ca issue {directory} ROUTER_ID, once per router")
        return
    days: int = args.days
    if not 1 <= days <= _MAX_ROUTER_CERT_DAYS:
        raise _UsageError(f"--days must be 1..{_MAX_ROUTER_CERT_DAYS}, not {days}")
    ca = ClusterCA.load(directory)
    files = ca.issue(args.router_id, args.out_dir, valid_for=datetime.timedelta(days=days))
    print(f"router {files.router_id}, valid until {files.not_after:%Y-%m-%d}:")
    print(f"  certificate  {files.cert}   (cluster_cert_file)")
    print(f"  key          {files.key}   (cluster_key_file)")
    print(f"  CA           {ca.ca_file}   (cluster_ca_file)")


def _instance_key(args: argparse.Namespace) -> None:
    if args.bits is not None and args.algorithm != "rsa":
        raise _UsageError("-b applies to -t rsa only")
    # Absent -b leaves the size to InstanceKey.generate's default.
    bits: dict[str, int] = {} if args.bits is None else {"rsa_bits": args.bits}
    key = InstanceKey.generate(args.algorithm, **bits)
    directory: Path = args.directory
    pem = key.private_pkcs1_pem() if args.algorithm == "rsa" else key.private_pkcs8_pem()
    # The private key goes first and only if absent: a second run must not
    # replace a key that a portal may already know.
    if not write_key_file(directory / _INSTANCE_PEM, pem, mode=0o600, replace=False):
        raise KeyFileError(f"{directory / _INSTANCE_PEM} already exists; not overwritten")
    public = key.public_openssh() + "\n"
    write_key_file(directory / _INSTANCE_PUB, public.encode(), mode=0o644)
    jwk = json.dumps(key.public_jwk(), indent=2) + "\n"
    write_key_file(directory / _INSTANCE_JWK, jwk.encode(), mode=0o644)
    print(f"kid {key.kid}")
    written = ", ".join((_INSTANCE_PEM, _INSTANCE_PUB, _INSTANCE_JWK))
    print(f"{key.fingerprint} written to {directory}: {written}")


def _jwt(args: argparse.Namespace) -> None:
    key = InstanceKey.load(args.key)
    print(sign_jwt(key, issuer=args.iss, kid=args.kid, lifetime_s=args.lifetime))


def _ssh_ca(args: argparse.Namespace) -> None:
    if args.ca_command == "init":
        ca, created = load_or_create_ssh_ca(args.path)
        print(ca.public_line)
        print(f"{ca.fingerprint} {'created' if created else 'existing'} SSH CA {args.path}")
        return
    valid_for_s: int = args.valid_for
    if valid_for_s < 1:
        raise _UsageError(f"--valid-for must be at least 1 second, not {valid_for_s}")
    ca = SshCertificateAuthority.load(args.ca)
    path: Path = args.public_key
    try:
        public_line = read_key_file(path, "public key").decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise KeyFileError(f"{path} is not an OpenSSH public key file") from error
    try:
        instance_public_key_from_openssh(public_line)  # to name the file if it is not
    except KeysError as error:
        raise KeyFileError(f"{path}: {error}") from error
    now = datetime.datetime.now(datetime.UTC)
    try:
        valid_before = now + datetime.timedelta(seconds=valid_for_s)
    except OverflowError as error:
        raise _UsageError(f"--valid-for {valid_for_s} is too far in the future") from error
    print(
        ca.sign_user_key(
            public_line, principals=args.principal, key_id=args.key_id,
            valid_after=now - _CLOCK_SKEW, valid_before=valid_before,
        )
    )  # fmt: skip


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
