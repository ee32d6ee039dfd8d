"""``hostmux-router tunnels|kick|block|unblock|blocks|drain``: the admin API from a shell.

The client finds the admin listener and the token from the router's own
configuration (``--config FILE``, ``HOSTMUX_*`` variables, flags such as
``--admin-listen`` and ``--admin-token-file``), so it runs with the same
options as the router it talks to. Exit status: 0 done, 1 refused or not
found (one line on stderr says why), 2 a configuration fault.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from hostmux.config.layered import ConfigError, load
from router.admin.token import read_token
from router.config import RouterConfig, check_admin_listen, parser

COMMANDS = ("tunnels", "kick", "block", "unblock", "blocks", "drain")
# Reason: the admin API answers from memory or one registry round trip.
TIMEOUT_S = 10.0


def _parser(command: str) -> argparse.ArgumentParser:
    p = parser()
    p.prog = f"hostmux-router {command}"
    p.description = {
        "tunnels": "List the router's tunnels (cluster-wide with a registry).",
        "kick": "Close a tunnel; its client sees the connection end (and may reconnect).",
        "block": "Block a key (SHA256:... fingerprint or instance:ID) or a name, and kick it.",
        "unblock": "Remove a block.",
        "blocks": "List the blocks.",
        "drain": "Drain the router (every worker): stop accepting, close tunnels, stay up.",
    }[command]
    if command == "kick":
        p.add_argument("tunnel_name", metavar="NAME", help="the tunnel's name")
    if command in ("block", "unblock"):
        p.add_argument("block_kind", metavar="KIND", choices=("key", "name"))
        p.add_argument("block_value", metavar="VALUE", help="SHA256:..., instance:ID or a name")
    if command == "block":
        p.add_argument("--reason", dest="block_reason", default="", help="shown in the list")
    if command in ("tunnels", "blocks"):
        p.add_argument("--json", dest="as_json", action="store_true", help="print the JSON")
    return p


def main(args: Sequence[str]) -> int:
    command, rest = args[0], list(args[1:])
    prog = f"hostmux-router {command}"
    parsed = _parser(command).parse_args(rest)
    try:
        config = load(RouterConfig, parsed)
        if not config.admin_listen:
            raise ConfigError(
                "admin_listen is not set (--admin-listen, HOSTMUX_ADMIN_LISTEN or the "
                "config file): no admin API to call"
            )
        token_path = config.admin_token_path
        if config.admin_token_file is None and not token_path.exists():
            raise ConfigError(
                f"no admin token at {token_path}: the router makes it there when it starts; give "
                "this command the router's state_dir (or admin_token_file)"
            )
        token = read_token(token_path)
        where = check_admin_listen(config.admin_listen)
    except (ConfigError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    method, path, body = _call(command, parsed)
    if isinstance(where, Path):
        transport = httpx.HTTPTransport(uds=str(where))
        base = "http://admin"
    else:
        host = f"[{where[0]}]" if ":" in where[0] else where[0]
        transport, base = httpx.HTTPTransport(), f"http://{host}:{where[1]}"
    try:
        with httpx.Client(transport=transport, base_url=base, timeout=TIMEOUT_S) as client:
            response = client.request(
                method, path, json=body, headers={"authorization": f"Bearer {token}"}
            )
    except httpx.HTTPError as exc:
        where_text = config.admin_listen
        print(f"{prog}: cannot reach the admin API at {where_text}: {exc}", file=sys.stderr)
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:200]}
    if response.status_code != 200:
        print(f"{prog}: {response.status_code}: {answer.get('error', '')}", file=sys.stderr)
        return 1
    print(_render(command, answer, getattr(parsed, "as_json", False)))
    return 0


def _call(command: str, parsed: argparse.Namespace) -> tuple[str, str, Any]:
    if command == "kick":
        return "POST", "/api/kick", {"name": parsed.tunnel_name}
    if command == "block":
        value = {"kind": parsed.block_kind, "value": parsed.block_value}
        return "POST", "/api/block", {**value, "reason": parsed.block_reason}
    if command == "unblock":
        return "POST", "/api/unblock", {"kind": parsed.block_kind, "value": parsed.block_value}
    if command == "drain":
        return "POST", "/api/drain", {}
    return "GET", f"/api/{command}", None


def _render(command: str, answer: dict[str, Any], as_json: bool) -> str:
    if as_json or command not in ("tunnels", "blocks"):
        return json.dumps(answer, indent=1)
    heads: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    if command == "tunnels":
        heads = (
            "NAME", "OWNER", "PEER", "VIA", "ROUTER", "SINCE", "REQS", "IN", "OUT", "WS", "IDLE",
            "MEMBER",
        )  # fmt: skip
        rows = [
            (
                t["name"], t["owner"], t["peer"], t["transport"], t["router"] or "-",
                _when(t["since"]), t["requests"], t["bytes_in"], t["bytes_out"],
                t["websockets_open"], _idle(t.get("idle")), t.get("pool_member") or "-",
            )
            for t in answer["tunnels"]
        ]  # fmt: skip
    else:
        heads = ("KIND", "VALUE", "SINCE", "BY", "REASON")
        rows = [
            (b["kind"], b["value"], _when(b["at"]), b["by"], b["reason"]) for b in answer["blocks"]
        ]
    return _table(heads, rows)


def _idle(idle: object) -> str:
    """A tunnel's idle state in the table ("-": the router keeps no activity)."""
    return "-" if idle is None else "yes" if idle else "no"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def _table(heads: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(heads), *([str(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(heads))]
    lines = ("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(line.rstrip() for line in lines)
