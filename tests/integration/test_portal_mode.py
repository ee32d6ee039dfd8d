"""Portal mode end to end: the example portal, the router, listeners and OpenSSH.

The portal is the source of identity (instance keys, SSH certificates) and
learns each instance's public URL (signed PUT) and tunnel state (signed
events). Real processes on loopback; nothing waits by sleeping.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

import keys
from examples.portal.pods import instance_environment

from .conftest import App, LoggedProcess, Router, Stack

EVENTS_SECRET = "test-events-secret"


class _AnyTime:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, int | float | str)


ANY_TIME = _AnyTime()
ADMIN_TOKEN = "test-admin-token"


@dataclass
class Portal:
    proc: LoggedProcess
    url: str
    state_dir: Path

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )

    async def create_instance(self, owner: str, key_type: str = "rsa") -> dict[str, str]:
        async with self.admin() as client:
            response = await client.post("/instances", json={"owner": owner, "key_type": key_type})
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def instance(self, instance_id: str) -> dict[str, object]:
        async with self.admin() as client:
            response = await client.get(f"/instances/{instance_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def set_routers(
        self, servers: list[str], host_keys: list[str], domains: list[str] | None = None
    ) -> None:
        body: dict[str, list[str]] = {"servers": servers, "host_keys": host_keys}
        if domains is not None:
            body["domains"] = domains
        async with self.admin() as client:
            response = await client.put("/admin/routers", json=body)
        assert response.status_code in (200, 204), response.text

    async def stats(self) -> dict[str, int]:
        """What the portal has served so far (``key_lookups``: GET /instances/{id}/keys)."""
        async with self.admin() as client:
            response = await client.get("/admin/stats")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def recorded_url(self, instance_id: str) -> str:
        record = await self.instance(instance_id)
        assert record.get("url"), record
        return str(record["url"])


async def start_portal(
    stack: Stack, state_dir: Path | None = None, port: int = 0, *extra: str
) -> Portal:
    state_dir = state_dir or stack.path("portal")
    state_dir.mkdir(exist_ok=True)
    proc = await stack.spawn(
        "portal",
        [
            sys.executable,
            "-m",
            "examples.portal",
            "serve",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            "--events-secret",
            EVENTS_SECRET,
            "--admin-token",
            ADMIN_TOKEN,
            *extra,
        ],
    )
    match = await proc.wait_for(r"portal listening on (http://127\.0\.0\.1:\d+)")
    return Portal(proc=proc, url=match[1], state_dir=state_dir)


def router_args(portal: Portal, ca_file: Path) -> list[str]:
    """A router in portal mode: keys and CA from ``portal``, events to it."""
    return [
        "--portal-keys-url",
        portal.url + "/instances/{id}/keys",
        "--portal-ca-keys-file",
        str(ca_file),
        "--events-url",
        portal.url + "/router-events",
        "--events-secret",
        EVENTS_SECRET,
    ]


async def start_portal_router(
    stack: Stack, portal: Portal, *extra: str, state_dir: Path | None = None
) -> Router:
    ca_file = stack.path("portal-ca.pub")
    async with httpx.AsyncClient(base_url=portal.url) as client:
        ca_file.write_text((await client.get("/ssh-ca.pub")).text)
    router = await stack.start_router(
        *router_args(portal, ca_file),
        "--portal-cache-ttl-s",
        "1",
        "--portal-negative-cache-ttl-s",
        "0.5",
        *extra,
        state_dir=state_dir,
    )
    await portal.set_routers(
        [f"127.0.0.1:{router.ssh_port}"], [router_host_key(router)], [router.domain]
    )
    return router


def router_host_key(router: Router) -> str:
    return " ".join((router.state_dir / "ssh_host_key.pub").read_text().split()[:2])


def write_private_key(stack: Stack, instance: dict[str, str]) -> Path:
    path = stack.path(f"{instance['id']}.pem")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(instance["private_key_pem"])
    return path


async def dit4c_listener(
    stack: Stack,
    router: Router,
    instance: dict[str, str],
    key: Path,
    app: App,
    *extra: str,
    trust_router_ca: bool = True,
) -> LoggedProcess:
    """hostmux-listener configured only by the original DIT4C environment variables
    (and, with ``trust_router_ca``, the router's CA file as HOSTMUX_ROUTER_CA_FILE)."""
    env = {
        **os.environ,
        **instance_environment(instance, key),
        "DIT4C_INSTANCE_HELPER_AUTH_HOST": "127.0.0.1",
        "DIT4C_INSTANCE_HELPER_AUTH_PORT": str(app.port),
        "HOSTMUX_BACKOFF_MAX_S": "2",
    }
    if trust_router_ca:
        env["HOSTMUX_ROUTER_CA_FILE"] = str(router.ca_cert)
    return await stack.spawn(
        f"listener-{instance['id']}", [sys.executable, "-m", "listener", *extra], env=env
    )


async def test_listener_publishes_its_url_and_the_portal_sees_the_tunnel(stack: Stack) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    app = await stack.start_app()
    instance = await portal.create_instance("alice")
    key = write_private_key(stack, instance)

    listener = await dit4c_listener(stack, router, instance, key, app)
    await listener.wait_for(r"event=url_published ")  # after the portal accepted it
    url = await portal.recorded_url(instance["id"])
    assert url == f"https://{instance['id']}.localhost:{router.https_port}"
    response = await router.get(instance["id"], "/headers")
    assert response.status_code == 200
    assert response.json()["_server"][1] == app.port
    await router.proc.wait_for(
        rf"event=portal_event_delivered kind=tunnel_up name={instance['id']}"
    )
    assert (await portal.instance(instance["id"]))["tunnel"] == {
        "state": "up",
        "router": f"127.0.0.1:{router.ssh_port}",
        "since": ANY_TIME,
    }

    mark = len(router.proc.lines)
    assert await listener.stop() == 0
    await router.proc.wait_for(
        rf"event=portal_event_delivered kind=tunnel_down name={instance['id']}", start=mark
    )
    tunnel = (await portal.instance(instance["id"]))["tunnel"]
    assert isinstance(tunnel, dict)
    assert tunnel["state"] == "down"


async def test_keys_the_portal_does_not_list_are_refused(stack: Stack) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    app = await stack.start_app()
    alpha = await portal.create_instance("alice")
    beta = await portal.create_instance("bob")
    alpha_key = write_private_key(stack, alpha)

    # A stranger's key for instance alpha: refused.
    stranger = stack.new_key("stranger")
    ssh = await stack.spawn(
        "ssh-stranger",
        stack.ssh_argv(
            router, stranger, "-N", "-R", f"80:127.0.0.1:{app.port}", f"{alpha['id']}@127.0.0.1"
        ),
    )
    assert await ssh.wait_exit() != 0
    await router.proc.wait_for(rf"event=ssh_auth_refused .*user={alpha['id']}")

    # Alpha's key for instance beta: refused.
    ssh = await stack.spawn(
        "ssh-alpha-as-beta",
        stack.ssh_argv(
            router, alpha_key, "-N", "-R", f"80:127.0.0.1:{app.port}", f"{beta['id']}@127.0.0.1"
        ),
    )
    assert await ssh.wait_exit() != 0

    # Alpha's key as alpha, asking for beta's name: the forward is refused.
    ssh = await stack.spawn(
        "ssh-alpha-claims-beta",
        stack.ssh_argv(
            router,
            alpha_key,
            "-N",
            "-R",
            f"{beta['id']}:80:127.0.0.1:{app.port}",
            f"{alpha['id']}@127.0.0.1",
        ),
    )
    assert await ssh.wait_exit() != 0
    await router.proc.wait_for(rf"event=forward_refused .*listen={beta['id']}:80 ")

    # Alpha's key as alpha with plain OpenSSH and no name: gets its own name.
    await stack.spawn(
        "ssh-alpha",
        stack.ssh_argv(
            router, alpha_key, "-N", "-R", f"80:127.0.0.1:{app.port}", f"{alpha['id']}@127.0.0.1"
        ),
    )
    await router.proc.wait_for(rf"event=tunnel_up name={alpha['id']} ")
    assert (await router.get(alpha["id"], "/")).status_code == 200


async def test_portal_certificates_are_checked_offline(stack: Stack) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    app = await stack.start_app()
    instance = await portal.create_instance("carol")
    own_key = stack.new_key("cert-holder")  # not listed by the portal: the certificate decides
    public_line = own_key.with_name(own_key.name + ".pub").read_text().strip()

    async def certificate(valid_for_s: int, ca: keys.SshCertificateAuthority | None = None) -> Path:
        if ca is None:
            async with portal.admin() as client:
                response = await client.post(
                    f"/instances/{instance['id']}/certificate",
                    json={"public_key": public_line, "valid_for_s": valid_for_s},
                )
            assert response.status_code == 200, response.text
            line = response.json()["certificate"]
        else:
            now = datetime.datetime.now(datetime.UTC)
            line = ca.sign_user_key(
                public_line,
                principals=[instance["id"]],
                key_id="rogue",
                valid_after=now - datetime.timedelta(minutes=1),
                valid_before=now + datetime.timedelta(seconds=valid_for_s),
            )
        path = stack.path("cert.pub")
        path.write_text(line + "\n")
        return path

    def argv(cert: Path) -> list[str]:
        return stack.ssh_argv(
            router,
            own_key,
            "-o",
            f"CertificateFile={cert}",
            "-N",
            "-R",
            f"80:127.0.0.1:{app.port}",
            f"{instance['id']}@127.0.0.1",
        )

    rogue = await stack.spawn(
        "ssh-rogue-cert", argv(await certificate(3600, keys.SshCertificateAuthority.generate()))
    )
    assert await rogue.wait_exit() != 0

    await stack.spawn("ssh-cert", argv(await certificate(3600)))
    await router.proc.wait_for(
        rf"event=ssh_connect .*owner=instance:{instance['id']} how=\"portal certificate\""
    )
    await router.proc.wait_for(rf"event=tunnel_up name={instance['id']} ")
    assert (await router.get(instance["id"], "/")).status_code == 200


async def test_expired_certificate_is_refused(stack: Stack) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    instance = await portal.create_instance("dave")
    ca = keys.SshCertificateAuthority.load(portal.state_dir / "ssh-ca")
    own_key = stack.new_key("expired")
    now = datetime.datetime.now(datetime.UTC)
    line = ca.sign_user_key(
        own_key.with_name(own_key.name + ".pub").read_text().strip(),
        principals=[instance["id"]],
        key_id="old",
        valid_after=now - datetime.timedelta(hours=2),
        valid_before=now - datetime.timedelta(hours=1),
    )
    cert = stack.path("expired-cert.pub")
    cert.write_text(line + "\n")
    ssh = await stack.spawn(
        "ssh-expired",
        stack.ssh_argv(
            router,
            own_key,
            "-o",
            f"CertificateFile={cert}",
            "-N",
            "-R",
            "80:127.0.0.1:9",
            f"{instance['id']}@127.0.0.1",
        ),
    )
    assert await ssh.wait_exit() != 0
    assert router.proc.find(rf"event=ssh_connect .*owner=instance:{instance['id']}") is None


async def test_portal_down_fails_closed_but_keeps_existing_tunnels(stack: Stack) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    app = await stack.start_app()
    up = await portal.create_instance("erin")
    later = await portal.create_instance("frank")
    up_key, later_key = write_private_key(stack, up), write_private_key(stack, later)
    await stack.spawn(
        "ssh-up",
        stack.ssh_argv(
            router, up_key, "-N", "-R", f"80:127.0.0.1:{app.port}", f"{up['id']}@127.0.0.1"
        ),
    )
    await router.proc.wait_for(rf"event=tunnel_up name={up['id']} ")

    assert await portal.proc.stop() == 0
    mark = len(router.proc.lines)
    refused = await stack.spawn(
        "ssh-later",
        stack.ssh_argv(
            router, later_key, "-N", "-R", f"80:127.0.0.1:{app.port}", f"{later['id']}@127.0.0.1"
        ),
    )
    assert await refused.wait_exit() != 0
    await router.proc.wait_for(rf"event=ssh_auth_portal_down instance={later['id']}", start=mark)
    assert (await router.get(up["id"], "/")).status_code == 200


async def test_listener_skips_a_dead_router_and_republishes_after_restart(stack: Stack) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    app = await stack.start_app()
    instance = await portal.create_instance("grace", key_type="ed25519")
    key = write_private_key(stack, instance)
    with trio.socket.socket() as sock:  # a router address where nothing listens
        await sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    await portal.set_routers([dead, f"127.0.0.1:{router.ssh_port}"], [router_host_key(router)])

    listener = await dit4c_listener(stack, router, instance, key, app)
    await listener.wait_for(r"event=url_published ")
    first = await portal.instance(instance["id"])
    await listener.wait_for(
        rf"event=tunnel_up name={instance['id']} .*router=127\.0\.0\.1:{router.ssh_port}"
    )

    assert await router.proc.stop() == 0
    mark = len(listener.lines)
    await listener.wait_for(r"event=(tunnel_down|tunnel_failed)", start=mark)
    ca_file = stack.path("portal-ca-again.pub")
    ca_file.write_text((portal.state_dir / "ssh-ca.pub").read_text())
    restarted = await stack.start_router(
        *router_args(portal, ca_file),
        state_dir=router.state_dir,
        ports=(router.ssh_port, router.https_port, router.http_port),
    )
    await listener.wait_for(r"event=url_published ", start=mark)
    again = await portal.instance(instance["id"])
    assert again["url"] == first["url"]
    assert again["url_updated_at"] != first["url_updated_at"]
    assert (await restarted.get(instance["id"], "/")).status_code == 200


async def test_original_dit4c_two_step_ssh_flow(stack: Stack) -> None:
    """What dit4c-helper-listener-ssh ran: register, then a stream-local forward + listen."""
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    app = await stack.start_app()
    instance = await portal.create_instance("heidi")
    key = write_private_key(stack, instance)

    # Without an instance id: how to use it, not OpenSSH's "shell request failed".
    usage = await stack.spawn(
        "ssh-register-usage", stack.ssh_argv(router, key, "register@127.0.0.1")
    )
    assert await usage.wait_exit() == 2
    await usage.wait_for(r"^usage: ssh register@HOST INSTANCE_ID")

    register = await stack.spawn(
        "ssh-register", stack.ssh_argv(router, key, "register@127.0.0.1", instance["id"])
    )
    assert await register.wait_exit() == 0
    await register.wait_for(rf"imported for {instance['id']}")

    socket = f"/tmp/{instance['kid'][:8]}-{os.urandom(8).hex()}.sock"
    listen = await stack.spawn(
        "ssh-listen",
        stack.ssh_argv(
            router,
            key,
            "-o",
            "ServerAliveInterval=30",
            "-R",
            f"{socket}:127.0.0.1:{app.port}",
            "listen@127.0.0.1",
            socket,
        ),
        stdin=subprocess.PIPE,
    )
    url = await listen.wait_for(rf"^(https://{instance['id']}\.localhost:{router.https_port})$")
    assert (await router.get(instance["id"], "/")).status_code == 200
    assert not await trio.Path(socket).exists()  # virtual: nothing bound on the router's host
    assert url[1].endswith(f":{router.https_port}")

    # A key the portal does not list cannot use the listen user.
    stranger = stack.new_key("dit4c-stranger")
    refused = await stack.spawn(
        "ssh-listen-stranger",
        stack.ssh_argv(
            router,
            stranger,
            "-R",
            f"/tmp/x-{os.getpid()}.sock:127.0.0.1:{app.port}",
            "listen@127.0.0.1",
            "/tmp/x.sock",
        ),
    )
    assert await refused.wait_exit() != 0


BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


async def test_a_known_instance_gets_the_holding_page_until_its_listener_is_up(
    stack: Stack,
) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    app = await stack.start_app()
    instance = await portal.create_instance("alice")
    key = write_private_key(stack, instance)

    # The portal has the instance; no listener yet: "starting…", not 502 or 404.
    page = await router.get(instance["id"], "/headers", headers=BROWSER)
    assert page.status_code == 503, page.text
    assert page.headers["retry-after"] == "5"
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<meta http-equiv=refresh content="5">' in page.text  # it reloads itself
    assert f"Starting {instance['id']}" in page.text
    assert "<script" not in page.text
    plain = await router.get(instance["id"], "/")  # curl, scripts: one line
    assert plain.status_code == 503
    assert plain.headers["retry-after"] == "5"
    assert plain.text.count("\n") == 1 and "is starting" in plain.text
    # A name the portal does not know is still 404.
    unknown = await router.get("i-nobody-has-this", "/", headers=BROWSER)
    assert unknown.status_code == 404

    listener = await dit4c_listener(stack, router, instance, key, app)
    await listener.wait_for(r"event=url_published ")
    served = await router.get(instance["id"], "/headers", headers=BROWSER)
    assert served.status_code == 200, served.text
    assert served.json()["_server"][1] == app.port

    # The tunnel goes away: within the reservation the name is the portal's, so the
    # page says "starting…" again (it was 502 "tunnel offline").
    assert await listener.stop() == 0
    await router.proc.wait_for(rf"event=tunnel_down name={instance['id']}")
    again = await router.get(instance["id"], "/", headers=BROWSER)
    assert again.status_code == 503
    assert again.headers["retry-after"] == "5"


async def test_a_flood_of_random_names_from_one_address_is_bounded_portal_traffic(
    stack: Stack,
) -> None:
    portal = await start_portal(stack)
    per_minute = 5
    router = await start_portal_router(
        stack, portal, "--holding-lookups-per-minute", str(per_minute)
    )
    before = (await portal.stats())["key_lookups"]
    started = trio.current_time()
    flood = 200
    async with router.client() as client:
        for n in range(flood):
            request = router.request(client, "GET", f"rnd-{n}-x", "/", headers=BROWSER)
            response = await client.send(request)
            assert response.status_code == 404, response.text
    elapsed = trio.current_time() - started
    asked = (await portal.stats())["key_lookups"] - before
    # The bucket's first tokens, plus what refilled while the flood ran.
    assert per_minute <= asked <= per_minute + 1 + int(elapsed * per_minute / 60), (asked, elapsed)
