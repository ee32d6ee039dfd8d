"""An idle tunnel's SSH connection sheds its start-up state (``router.ssh.lean``) and
keeps serving: OpenSSH re-keys it again and again under load.

Real OpenSSH ``ssh -R`` with a small ``RekeyLimit``, a real router process, the
sample app; loopback only.
"""

from __future__ import annotations

import hashlib

from examples.sample_app.app import expected_bytes

from .conftest import World

MIB = 1024 * 1024


async def test_a_tunnel_keeps_serving_through_rekeys_after_the_shed(world: World) -> None:
    router, stack = world.router, world.stack
    start = len(router.proc.lines)
    await stack.spawn(
        "ssh-rekey",
        stack.ssh_argv(
            router, world.key, "-o", "RekeyLimit=256K", "-N",
            "-R", f"rekey:80:127.0.0.1:{world.app.port}", "tunnel@127.0.0.1",
        ),
    )  # fmt: skip
    await router.proc.wait_for(r"event=tunnel_up name=rekey ", start=start)

    n = 8 * MIB  # ~32 key exchanges one way at 256 KiB each
    response = await router.get("rekey", f"/bytes?n={n}&seed=rk")
    assert response.status_code == 200
    digest = hashlib.sha256()
    for chunk in expected_bytes(n, "rk"):
        digest.update(chunk)
    assert hashlib.sha256(response.content).hexdigest() == digest.hexdigest()
    for _ in range(3):  # fresh channels on the re-keyed connection
        page = await router.get("rekey", "/")
        assert page.status_code == 200
        assert "hostmux sample app" in page.text
