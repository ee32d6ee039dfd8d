"""The auth helper's configuration: TOML file, ``HOSTMUX_*`` environment, flags.

A DIT4C pod's variables work too (``hostmux.dit4c`` lists them).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hostmux.config.layered import (
    ConfigError,
    build_parser,
    check_ranges,
    load,
    option,
    parse_host_port,
)
from hostmux.config.ranges import DAY_S, HOUR_S, MINUTE_S, MONTH_S
from hostmux.dit4c import authhelper_environment
from hostmux.log import LOG_FORMATS, check_log_format
from hostmux.names import InvalidName, check_name


@dataclass(frozen=True)
class AuthHelperConfig:
    listen: str = option("127.0.0.1:8081", "where the listener sends requests", metavar="HOST:PORT")
    app: str = option("127.0.0.1:8888", "the app behind the helper", metavar="HOST:PORT")
    instance_id: str = option("", "this instance's id (its name on the router)", metavar="ID")
    portal_url: str = option("", "the portal: OAuth2 server and access checks")
    cookie_keys: list[str] = option(
        [],
        "Fernet keys sealing cookies, newest first (rotation); default: from cookie_keys_file."
        " On the command line write --cookie-keys=KEY: a key may start with '-'",
        metavar="KEY",
    )
    cookie_keys_file: Path | None = option(
        None, "file with one Fernet key per line, newest first (created if missing)"
    )
    session_lifetime_s: int = option(
        8 * 3600, "how long a login lasts", minimum=MINUTE_S, maximum=MONTH_S
    )
    public_url: str = option(
        "",
        "this instance's published URL, https://ID.DOMAIN[:PORT]: the OAuth2 redirect URI is "
        "its origin + /_hostmux/callback (default: the URL the portal holds for the instance)",
    )
    state_dir: Path | None = option(
        None, "where revoked sessions are kept across a restart (default: in memory only)"
    )
    access_recheck_s: float = option(
        300.0,
        "ask the portal again whether a session's user may still come in this often",
        minimum=1,
        maximum=DAY_S,
    )
    metrics_listen: str = option(
        "",
        "serve /metrics (Prometheus), /healthz and /readyz here (HOST:PORT; loopback or a "
        "private address: nothing there is authenticated); empty: off",
        metavar="HOST:PORT",
    )
    app_idle_connections: int = option(
        16,
        "idle connections to the app kept open for the next browser connection",
        minimum=0,
        maximum=10_000,
        zero="none: each browser connection opens its own",
    )
    instance_key_file: Path | None = option(
        None,
        "the instance's private key: signs the visitor audit batches sent to the portal "
        "(POST /instances/ID/audit), as the listener signs its URL (default: visits are "
        "only logged)",
    )
    jwt_iss: str = option("", "JWT issuer of the audit batches (default: instance_id)")
    jwt_kid: str = option(
        "", "JWT key id of the audit batches (default: the key's RFC 7638 thumbprint)"
    )
    audit_queue_max: int = option(
        10_000,
        "visitor audit records held while the portal does not take them; more are counted "
        "and dropped",
        minimum=1,
        maximum=10_000_000,
    )
    audit_batch_max: int = option(
        500, "visitor audit records sent in one batch at most", minimum=1, maximum=5_000
    )
    audit_flush_interval_s: float = option(
        5.0,
        "send the visitor audit records waiting at least this often (a full batch goes at once)",
        minimum=0.1,
        maximum=HOUR_S,
    )
    log_level: str = option("info", "debug, info, warning or error", metavar="LEVEL")
    log_format: str = option(LOG_FORMATS[0], "logfmt or json (one object per line)")

    def __post_init__(self) -> None:
        check_ranges(self)
        parse_host_port(self.listen, "listen")
        parse_host_port(self.app, "app")
        if self.metrics_listen:
            parse_host_port(self.metrics_listen, "metrics_listen")
        try:
            check_name(self.instance_id)
        except InvalidName as exc:
            raise ValueError(f"instance_id: {exc}") from None
        if not self.portal_url.startswith(("http://", "https://")):
            raise ValueError("portal_url: an http(s) URL is required")
        if not self.cookie_keys and self.cookie_keys_file is None:
            raise ValueError("cookie_keys or cookie_keys_file is required")
        if self.public_url:
            check_public_url(self.public_url, self.instance_id)
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level: {self.log_level!r} is not debug, info, warning or error")
        check_log_format(self.log_format)


def check_public_url(url: str, instance_id: str) -> None:
    """ValueError unless ``url`` is http(s)://INSTANCE_ID.DOMAIN[:PORT] with nothing after."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises for a bad port)
    except ValueError:
        raise ValueError(f"public_url: {url!r} has a bad port") from None
    host = parts.hostname or ""
    if (
        parts.scheme not in ("http", "https")
        or not host.startswith(instance_id + ".")
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"public_url: expected http(s)://{instance_id}.DOMAIN[:PORT], not {url!r}")


def parser() -> argparse.ArgumentParser:
    return build_parser(
        AuthHelperConfig,
        "hostmux-authhelper",
        "Let only the instance's portal users through to the app (OAuth2 login, session cookie).",
    )


def load_config(
    argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> AuthHelperConfig:
    env = os.environ if environ is None else environ
    return load(AuthHelperConfig, parser().parse_args(argv), authhelper_environment(env))


__all__ = ["AuthHelperConfig", "ConfigError", "load_config"]
