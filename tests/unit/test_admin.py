"""The admin API's pure parts and its answers, without sockets: blocks, the token,
the routes' status codes and JSON, the blocks file, ``admin_listen``'s rules."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions
from redis._parsers.base import BaseParser

from hostmux.config.layered import ConfigError
from hostmux.relay import ByteStream
from router.admin.api import SECURITY_HEADERS, AdminApi
from router.admin.http import AdminReply, AdminRequest, start_admin_server
from router.admin.local import BlockFile, LocalBackend
from router.admin.token import MIN_TOKEN_CHARS, AdminToken, load_token
from router.blocks import BadBlock, Block, BlockList, checked
from router.config import RouterConfig, check_admin_listen
from router.registry.redis_store import refused_credentials
from router.routing import NameTaken
from router.tunnels import Blocked, Tunnel, TunnelHub

from .asyncio_bounded import run

TOKEN = "a-token-long-enough-for-tests"
OWNER = "SHA256:2cp0xJdBf3RNmC/39gaQB3NOvGeLXDKBcEHsWjllwYI"


def test_blocks_refuse_a_key_everywhere_and_a_name_for_everyone() -> None:
    blocks = BlockList([Block("key", OWNER), Block("name", "phish")])
    assert blocks.refusal(OWNER, "anything") == "this key is blocked by the router's operator"
    assert blocks.refusal("SHA256:other", "phish") == (
        "the name 'phish' is blocked by the router's operator"
    )
    assert blocks.refusal("SHA256:other", "fine") is None
    assert blocks.remove("key", OWNER) is not None and blocks.remove("key", OWNER) is None
    assert blocks.refusal(OWNER, "anything") is None and len(blocks) == 1


@pytest.mark.parametrize(
    ("kind", "value", "error"),
    [
        ("door", "x", "kind:"),
        ("name", "Not a name", "is not a valid name"),
        ("name", "", "non-empty"),
        ("key", "has space", "without spaces"),
        ("key", "x" * 201, "1-200"),
        ("key", 7, "non-empty string"),
    ],
)
def test_bad_blocks_say_why(kind: object, value: object, error: str) -> None:
    with pytest.raises(BadBlock, match=error):
        checked(kind, value)


def test_a_name_block_is_lower_case_and_round_trips_as_json() -> None:
    assert checked("name", "Demo") == ("name", "demo")
    block = Block("key", OWNER, by="me", at=12.5, reason="abuse")
    assert Block.from_json(json.loads(json.dumps(block.to_json()))) == block
    with pytest.raises(BadBlock):
        Block.from_json({"kind": "key", "value": OWNER, "reason": 5})


def test_the_token_file_is_made_once_with_mode_0600_and_compared_exactly(tmp_path: Path) -> None:
    path = tmp_path / "admin_token"
    token, made = load_token(path, create=True)
    assert made and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, made_again = load_token(path, create=True)
    assert again.value == token.value and not made_again
    assert token.accepts(f"Bearer {token.value}") and token.accepts(f"bearer  {token.value} ")
    for wrong in (None, "", token.value, f"Basic {token.value}", f"Bearer {token.value}x"):
        assert not token.accepts(wrong)
    assert token.value not in repr(token) and token.token_id.startswith(f"{path}#")


def test_a_bad_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_token(tmp_path / "missing", create=False)
    short = tmp_path / "short"
    short.write_text("x" * (MIN_TOKEN_CHARS - 1))
    with pytest.raises(ConfigError, match=f"at least {MIN_TOKEN_CHARS}"):
        load_token(short, create=False)


@pytest.mark.parametrize("value", ["0.0.0.0:8081", "192.0.2.1:80", "example.org:80", "x"])
def test_admin_listen_is_loopback_or_a_unix_socket(value: str) -> None:
    with pytest.raises(ValueError, match="admin_listen"):
        check_admin_listen(value)
    with pytest.raises(ValueError, match="admin_listen"):
        RouterConfig(admin_listen=value)


def test_admin_listen_accepts_loopback_and_paths() -> None:
    assert check_admin_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert check_admin_listen("[::1]:9") == ("::1", 9)
    assert check_admin_listen("/run/x.sock") == Path("/run/x.sock")


def test_a_corrupt_blocks_file_stops_the_router_rather_than_dropping_blocks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "blocks.json"
    store = BlockFile(path)
    assert store.load() == []
    store.save([Block("name", "demo", at=1.0)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load() == [Block("name", "demo", at=1.0)]
    for bad in ("{not json", '{"blocks": 3}', '{"blocks": [{"kind": "door"}]}'):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="blocks file"):
            store.load()


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.hub = TunnelHub(domain="localhost", scheme="https", public_port=0, reservation_s=60)
        self.drains: list[str] = []
        backend = LocalBackend(self.hub, BlockFile(tmp_path / "blocks.json"), self._drain)
        self.api = AdminApi(AdminToken(TOKEN, tmp_path / "t"), backend)
        self.closed: list[str] = []

    def _drain(self) -> list[str]:
        self.drains.append("drain")
        return ["router"]

    def tunnel(self, name: str, owner: str = OWNER) -> Tunnel:
        async def never(ip: str, port: int) -> ByteStream:
            raise AssertionError("not opened in these tests")

        tunnel = Tunnel(name=name, owner=owner, peer="127.0.0.1:5", open_stream=never)

        def close(reason: str) -> None:  # what the SSH layer does: end the forward
            self.closed.append(name)
            self.hub.release(tunnel)

        tunnel.close = close
        self.hub.claim(tunnel)
        return tunnel

    def call(
        self, method: str, path: str, body: object = None, token: str | None = TOKEN
    ) -> tuple[int, dict[str, Any]]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        raw = b"" if body is None else json.dumps(body).encode()
        reply: AdminReply = run(
            self.api.handle(AdminRequest(method, path, headers, raw, "127.0.0.1:9"))
        )
        return reply.status, json.loads(reply.body) if reply.content_type.startswith(
            "application/json"
        ) else {}


def test_the_api_answers_with_json_and_its_status_codes(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.tunnel("demo")
    assert world.call("GET", "/api/tunnels", token=None)[0] == 401
    assert world.call("GET", "/api/tunnels", token="wrong-but-long-enough")[0] == 401
    assert world.call("GET", "/api/nothing")[0] == 404
    assert world.call("GET", "/api/kick")[0] == 405
    status, body = world.call("GET", "/api/tunnels")
    assert status == 200
    assert len(body["tunnels"]) == 1
    tunnel = body["tunnels"][0]
    assert tunnel["name"] == "demo" and tunnel["owner"] == OWNER and tunnel["transport"] == "ssh"
    assert world.call("POST", "/api/kick", {"name": "nobody"})[0] == 404
    assert world.call("POST", "/api/kick", {"name": 3})[0] == 400
    assert world.call("POST", "/api/kick", {"name": "DEMO"}) == (200, {"name": "demo", "kicked": 1})
    assert world.closed == ["demo"] and world.hub.tunnels() == []
    assert world.call("POST", "/api/drain", {}) == (200, {"draining": ["router"]})
    assert world.drains == ["drain"]


def test_a_block_kicks_refuses_claims_and_persists(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.tunnel("demo")
    world.tunnel("other", owner="SHA256:someone-else")
    status, body = world.call("POST", "/api/block", {"kind": "key", "value": OWNER})
    assert status == 200 and body["kicked"] == 1 and world.closed == ["demo"]
    with pytest.raises(Blocked, match="this key is blocked"):
        world.tunnel("fresh")
    assert issubclass(Blocked, NameTaken)  # refused like a taken name, with its own message
    assert json.loads((tmp_path / "blocks.json").read_text())["blocks"][0]["value"] == OWNER
    reloaded = World(tmp_path)  # a restart: the blocks come back from the file
    with pytest.raises(Blocked):
        reloaded.tunnel("fresh")
    assert reloaded.call("POST", "/api/unblock", {"kind": "key", "value": OWNER})[0] == 200
    assert reloaded.call("POST", "/api/unblock", {"kind": "key", "value": OWNER})[0] == 404
    reloaded.tunnel("fresh")
    assert world.call("POST", "/api/block", {"kind": "name", "value": "Bad Name"})[0] == 400


def test_the_status_page_needs_no_token_and_carries_a_strict_policy(tmp_path: Path) -> None:
    world = World(tmp_path)
    for path in ("/", "/status.js", "/status.css"):
        reply = run(world.api.handle(AdminRequest("GET", path, {}, b"", "127.0.0.1:9")))
        assert reply.status == 200 and reply.body
    policy = dict(SECURITY_HEADERS)["content-security-policy"]
    assert "default-src 'none'" in policy and "unsafe" not in policy
    page = (Path(__file__).parents[2] / "router" / "admin" / "status.html").read_text()
    assert "<script>" not in page and "<style" not in page  # no inline code...
    assert not re.search(r"\son[a-z]+=", page)  # ...nor inline event handlers


def test_the_admin_server_answers_head_pipelined_and_hostile_requests() -> None:
    """The listener on a real loopback socket: h11 parses; each answer is complete."""

    async def handler(request: AdminRequest) -> AdminReply:
        return AdminReply(200, f"{request.method} {request.path}".encode())

    async def exchange(port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        answer = await reader.read()  # until the server closes
        writer.close()
        return answer

    async def scenario() -> list[bytes]:
        server = await start_admin_server(("127.0.0.1", 0), handler, (("x-test", "1"),))
        port = server.sockets[0].getsockname()[1]
        try:
            return [
                await exchange(port, data)
                for data in (
                    b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n"
                    b"connection: close\r\n\r\n",
                    b"GET / HTTP/1.1\r\nhost: x\r\nx: " + b"a" * 20_000 + b"\r\n\r\n",
                    b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n",
                    b"\x16\x03\x01 not http\r\n\r\n",
                )
            ]
        finally:
            server.close()

    pipelined, big_head, big_body, garbage = run(scenario())
    assert pipelined.count(b"HTTP/1.1 200 OK\r\n") == 2 and b"x-test: 1\r\n" in pipelined
    assert pipelined.endswith(b"\r\n\r\nGET /b")  # the HEAD's answer had no body
    assert big_head.startswith(b"HTTP/1.1 431 ") and big_body.startswith(b"HTTP/1.1 413 ")
    assert garbage.startswith(b"HTTP/1.1 400 ")


def test_check_config_reads_the_admin_files_as_the_router_would(tmp_path: Path) -> None:
    from router.admin.setup import check_files

    config = RouterConfig(state_dir=tmp_path, admin_listen="127.0.0.1:0")
    check_files(config)  # no token yet (the router makes it), no blocks: fine
    assert not (tmp_path / "admin_token").exists()  # check-config creates nothing
    (tmp_path / "blocks.json").write_text('{"blocks": 3}')
    with pytest.raises(ConfigError, match="blocks file"):
        check_files(config)
    missing = RouterConfig(admin_listen="/run/x.sock", admin_token_file=tmp_path / "none")
    with pytest.raises(ConfigError, match="no such file"):
        check_files(missing)


def redis_reply_error(reply: str) -> Exception:
    """The exception redis-py raises for Redis's error ``reply``."""
    error: Exception = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    return error


def test_only_a_refusal_of_the_routers_credentials_is_the_operators_to_fix() -> None:
    assert refused_credentials(exceptions.AuthenticationError("invalid username-password pair"))
    assert refused_credentials(exceptions.NoPermissionError("this user has no permissions"))
    # Redis's own replies, as redis-py reads them
    assert refused_credentials(redis_reply_error("NOPERM this user has no permissions"))
    assert refused_credentials(redis_reply_error("WRONGPASS invalid username-password"))
    assert refused_credentials(redis_reply_error("NOAUTH Authentication required."))
    assert not refused_credentials(exceptions.ConnectionError("Connection refused"))
    assert not refused_credentials(exceptions.TimeoutError("Timeout reading from socket"))
    assert not refused_credentials(OSError("unreachable"))
