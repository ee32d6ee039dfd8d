"""The listener's configuration: TOML file, ``HOSTMUX_*`` environment, flags."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from router._layered_config import ConfigError, build_parser, load, option, parse_host_port
from router._names import InvalidName, check_name


@dataclass(frozen=True)
class ListenerConfig:
    router: str = option("127.0.0.1:2222", "the router's SSH address, HOST:PORT")
    name: str = option("", "the name to serve at NAME.DOMAIN (empty: a random name, kept)")
    target: str = option("127.0.0.1:3000", "the app to expose, HOST:PORT")
    user: str = option("hostmux", "SSH user name (the instance id in portal mode)")
    identity_file: Path = option(Path("~/.ssh/id_ed25519").expanduser(), "private key")
    known_hosts: Path | None = option(
        None, "known_hosts file pinning the router's host key (default: ~/.ssh/known_hosts)"
    )
    host_key_fingerprint: list[str] = option(
        [], "pin the router's host key by fingerprint (SHA256:...), instead of known_hosts"
    )
    keepalive_interval_s: float = option(15.0, "SSH keepalive probe interval")
    connect_timeout_s: float = option(15.0, "time allowed to connect and authenticate")
    backoff_max_s: float = option(30.0, "longest wait between reconnect attempts")
    log_level: str = option("info", "debug, info, warning or error")

    def __post_init__(self) -> None:
        parse_host_port(self.router, "router")
        parse_host_port(self.target, "target")
        if self.name:
            try:
                check_name(self.name)
            except InvalidName as exc:
                raise ValueError(f"name: {exc}") from None
        for fingerprint in self.host_key_fingerprint:
            if not fingerprint.startswith("SHA256:"):
                raise ValueError(f"host_key_fingerprint: {fingerprint!r} is not SHA256:...")
        if self.keepalive_interval_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("keepalive_interval_s and connect_timeout_s must be positive")
        if self.backoff_max_s < 1:
            raise ValueError("backoff_max_s: at least 1")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level: {self.log_level!r} is not debug, info, warning or error")

    @property
    def router_address(self) -> tuple[str, int]:
        return parse_host_port(self.router, "router")

    @property
    def target_address(self) -> tuple[str, int]:
        return parse_host_port(self.target, "target")

    @property
    def known_hosts_path(self) -> Path | None:
        if self.known_hosts is not None:
            return self.known_hosts
        return None if self.host_key_fingerprint else Path("~/.ssh/known_hosts").expanduser()


def parser() -> argparse.ArgumentParser:
    return build_parser(
        ListenerConfig,
        "hostmux-listener",
        "Expose a local app at https://NAME.DOMAIN through a hostmux router; reconnects for ever.",
    )


def load_config(
    argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> ListenerConfig:
    return load(ListenerConfig, parser().parse_args(argv), environ)


__all__ = ["ConfigError", "ListenerConfig", "load_config"]
