"""What Redis must provide (README, "Several routers"): the ACL user it gives,
and ``rediss://`` with a CA of the operator's.

Real parts: Debian's redis-server started with the README's ACL line (the
``default`` user off) or serving TLS only, router processes ``a`` and ``b``
with the router link, stock OpenSSH ``ssh -R`` on router a, the sample app.
Each tunnel on a answers through b's front door: both routers read and write
the registry as that user (claims, leases, the link's addresses, the admin
keys, pub/sub).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from .cluster_world import ClusterCA, Member, holders, start_member
from .conftest import App, Router, Stack, public_key_of
from .redis_server import RedisAcl, RedisServer, RedisTls
from .tls_certs import issue, make_ca

# The README's line, word for word (README, "What Redis must provide").
README_ACL_RULES = (
    "~hostmux:*", "&hostmux:*", "+@read", "+@write", "+@scripting", "+@pubsub",
    "+ping", "+time", "+incr",
)  # fmt: skip
PASSWORD = "s3cret-registry-password"


def assert_no_denied_command(*routers: Router) -> None:
    """Redis refused no command of theirs (NOPERM), and nothing crashed."""
    for router in routers:
        lines = "\n".join(router.proc.lines)
        assert "NOPERM" not in lines, lines
        assert "Traceback" not in lines, lines


async def a_tunnel_on_a_answers_through_b(
    stack: Stack, server: RedisServer, tmp_path: Path
) -> tuple[App, Path, Member]:
    """Routers a and b on ``server``; a tunnel opened with OpenSSH on a answers through b,
    and Redis refused neither router a command. Returns the app, the tunnel's key and b."""
    app = await stack.start_app()
    alice = stack.new_key("alice")
    ca = ClusterCA.create(tmp_path / "cluster-ca")
    a = await start_member(stack, server, ca, "a", keys=(alice,))
    b = await start_member(stack, server, ca, "b", keys=(alice,))
    await stack.openssh_tunnel(a.router, alice, "demo", app.port)
    assert set(holders(server, "demo")) == {"a"}
    response = await b.router.get("demo", "/headers")
    assert response.status_code == 200
    assert response.json()["x-forwarded-proto"] == ["https"]
    assert_no_denied_command(a.router, b.router)
    return app, alice, b


async def test_the_readme_acl_user_is_enough_and_a_wrong_password_is_refused_clearly(
    stack: Stack, tmp_path: Path
) -> None:
    acl = RedisAcl("hostmux", PASSWORD, README_ACL_RULES)
    server = RedisServer(tmp_path, acl=acl)
    try:
        assert f"hostmux:{PASSWORD}@" in server.url
        anonymous = redis.Redis.from_url(server.url_as())
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()  # the default user is off
        anonymous.close()
        app, alice, b = await a_tunnel_on_a_answers_through_b(stack, server, tmp_path)

        # A wrong password: the router starts (it says why it could not read the registry,
        # in Redis's words) and refuses claims; never a traceback, never a guessed claim.
        wrong = await stack.start_router(
            "--registry", server.url_as("hostmux", "wrong-password"), "--router-id", "c"
        )
        await wrong.proc.wait_for(
            r"event=admin_blocks_unread error=.*invalid username-password pair"
        )
        wrong.authorize(public_key_of(alice))
        mark = len(wrong.proc.lines)
        refused = await stack.openssh_tunnel(wrong, alice, "other", app.port, wait=False)
        assert await refused.wait_exit() != 0
        await wrong.proc.wait_for(
            r'event=forward_refused .*listen=other:80 reason="the route registry refused the '
            r"router's credentials \(for the router's operator to fix\)\"",
            start=mark,
        )
        await wrong.proc.wait_for(
            r"event=lease_renewal_failed error=.*invalid username-password pair", start=mark
        )
        assert "Traceback" not in "\n".join(wrong.proc.lines)
        assert holders(server, "other") == {}
        assert (await b.router.get("demo", "/")).status_code == 200  # the others go on
    finally:
        server.stop()


async def test_rediss_with_the_operators_ca_carries_the_cluster(
    stack: Stack, tmp_path: Path
) -> None:
    """``rediss://...?ssl_ca_certs=FILE``: the routers check Redis's certificate (its
    CA and its address) with the CA the URL names; without it they refuse Redis."""
    pki = tmp_path / "redis-pki"
    pki.mkdir()
    redis_ca = make_ca(pki, "redis-ca")
    leaf = issue(redis_ca, pki, "redis", server_names=["127.0.0.1"])
    server = RedisServer(tmp_path, tls=RedisTls(leaf.cert_file, leaf.key_file, redis_ca.cert_file))
    try:
        assert server.url.startswith("rediss://127.0.0.1:")
        assert server.url.endswith(f"/0?ssl_ca_certs={redis_ca.cert_file}"), server.url
        await a_tunnel_on_a_answers_through_b(stack, server, tmp_path)

        # Without the CA: the system's CAs do not know Redis's; the router says so.
        untrusting = await stack.start_router(
            "--registry", server.url.partition("?")[0], "--router-id", "c"
        )
        await untrusting.proc.wait_for(r"event=admin_blocks_unread error=.*certificate verify")
        assert "Traceback" not in "\n".join(untrusting.proc.lines)
    finally:
        server.stop()
