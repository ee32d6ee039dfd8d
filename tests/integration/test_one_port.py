"""One-port mode: OpenSSH and HTTPS (and plain HTTP) on the same port."""

from __future__ import annotations

import httpx

from .conftest import Stack, public_key_of


async def test_ssh_https_and_http_share_one_port(stack: Stack) -> None:
    router = await stack.start_router("--one-port-listen", "127.0.0.1:0")
    one_port = int(
        (await router.proc.wait_for(r"event=router_ready .*one_port=127\.0\.0\.1:(\d+)"))[1]
    )
    app = await stack.start_app()
    key = stack.new_key("oneport")
    router.authorize(public_key_of(key))

    # An SSH client on the one port...
    router.ssh_port, ssh_port = one_port, router.ssh_port
    try:
        await stack.openssh_tunnel(router, key, "single", app.port)
    finally:
        router.ssh_port = ssh_port
    # ...and a TLS client on the same port...
    async with httpx.AsyncClient(verify=router.ssl_context(), timeout=30) as client:
        tls = await client.get(
            f"https://127.0.0.1:{one_port}/headers",
            headers={"host": "single.localhost"},
            extensions={"sni_hostname": "single.localhost"},
        )
        plain = await client.get(
            f"http://127.0.0.1:{one_port}/headers", headers={"host": "single.localhost"}
        )
    assert tls.status_code == 200
    assert tls.json()["x-forwarded-proto"] == ["https"]
    # ...and plain HTTP too.
    assert plain.status_code == 200
    assert plain.json()["x-forwarded-proto"] == ["http"]
