"""Attacks on the auth helper's sessions, end to end without a browser (issue 15).

Real processes on loopback: the example portal, a router in portal mode, a
listener, the auth helper and the sample app. The OAuth2 login is driven with
httpx the way a browser would follow it. Every wait has a deadline; nothing
waits by sleeping.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import trio

from examples.portal.pods import instance_environment

from .conftest import LoggedProcess, Router, Stack
from .test_portal_mode import Portal, start_portal, start_portal_router, write_private_key

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}
SESSION = "__Host-hostmux-session"
LOGIN = "__Host-hostmux-login"
# What the tests set access_recheck_s to, and the slack a loaded 2-core machine needs
# on top of it for one request through router, helper and portal.
RECHECK_S = 2.0
SLACK_S = 3.0


@dataclass
class Pod:
    instance_id: str
    helper: LoggedProcess
    helper_port: int
    helper_args: list[str]
    env: dict[str, str]


@dataclass
class World:
    stack: Stack
    portal: Portal
    router: Router


async def start_world(stack: Stack, *, push: bool) -> World:
    """Portal and router; with ``push`` the portal trusts the router's CA (pushes work)."""
    users = [arg for name, pw in PASSWORDS.items() for arg in ("--user", f"{name}:{pw}")]
    router_state = stack.path("router-state")
    ca = ["--router-ca-file", str(router_state / "tls" / "dev-ca.pem")] if push else []
    portal = await start_portal(stack, None, 0, *users, *ca)
    portal.url = portal.url.replace("127.0.0.1", "localhost")  # authlib: http only to localhost
    router = await start_portal_router(stack, portal, state_dir=router_state)
    return World(stack, portal, router)


async def start_pod(world: World, owner: str, recheck_s: float) -> Pod:
    stack = world.stack
    instance = await world.portal.create_instance(owner)
    key = write_private_key(stack, instance)
    app = await stack.start_app()
    env = {**os.environ, **instance_environment(instance, key),
           "HOSTMUX_ROUTER_CA_FILE": str(world.router.ca_cert)}  # fmt: skip
    args = [
        "--app", f"127.0.0.1:{app.port}", "--cookie-keys-file", str(stack.path("cookies")),
        "--state-dir", str(stack.path("helper-state")), "--access-recheck-s", str(recheck_s),
    ]  # fmt: skip
    helper, port = await _start_helper(stack, env, [*args, "--listen", "127.0.0.1:0"])
    listener = await stack.spawn(
        "listener", [sys.executable, "-m", "listener", "--target", f"127.0.0.1:{port}"], env=env
    )
    await listener.wait_for(r"event=url_published ")
    return Pod(instance["id"], helper, port, args, env)


async def _start_helper(
    stack: Stack, env: dict[str, str], args: list[str]
) -> tuple[LoggedProcess, int]:
    helper = await stack.spawn("helper", [sys.executable, "-m", "authhelper", *args], env=env)
    ready = await helper.wait_for(r"event=authhelper_ready listen=127\.0\.0\.1:(\d+)")
    return helper, int(ready[1])


async def get(
    world: World, pod: Pod, path: str, cookie: str = "", **headers: str
) -> httpx.Response:
    async with world.router.client() as client:
        request = world.router.request(
            client, "GET" if "method" not in headers else headers.pop("method"),
            pod.instance_id, path, headers={"cookie": cookie, **headers} if cookie else headers,
        )  # fmt: skip
        return await client.send(request)


def _cookie(response: httpx.Response, name: str) -> str:
    for line in response.headers.get_list("set-cookie"):
        key, _, rest = line.partition("=")
        if key == name:
            return rest.split(";")[0]
    raise AssertionError(f"no {name} in {response.headers.get_list('set-cookie')}")


async def log_in(
    world: World, pod: Pod, user: str, *, planted: str = ""
) -> tuple[str, httpx.Cookies]:
    """The session cookie after a full OAuth2 login, and the portal's cookies.

    ``planted`` is put before our cookies in every request to the instance, as a
    sibling's cookie for the parent domain would be.
    """
    first = await get(world, pod, "/headers", planted.rstrip("; ") if planted else "")
    assert first.status_code == 302, first.text
    login_cookie = _cookie(first, LOGIN)
    authorize = urlsplit(first.headers["location"])
    async with httpx.AsyncClient(base_url=world.portal.url, timeout=30) as portal:
        form = {"username": user, "password": PASSWORDS[user],
                "next": f"{authorize.path}?{authorize.query}"}  # fmt: skip
        logged_in = await portal.post("/login", data=form)
        assert logged_in.status_code == 303, logged_in.text
        granted = await portal.get(logged_in.headers["location"])
        assert granted.status_code == 302, granted.text
        portal_cookies = portal.cookies
    callback = urlsplit(granted.headers["location"])
    back = await get(world, pod, f"{callback.path}?{callback.query}",
                     f"{planted}{LOGIN}={login_cookie}")  # fmt: skip
    assert back.status_code == 302, back.text
    return _cookie(back, SESSION), portal_cookies


async def refused_within(world: World, pod: Pod, cookie: str, bound_s: float) -> float:
    """Poll until ``cookie`` no longer gets through; the seconds it took (fails past the bound)."""
    start = time.monotonic()
    with trio.fail_after(bound_s):
        while True:
            if (await get(world, pod, "/headers", f"{SESSION}={cookie}")).status_code != 200:
                break
            await trio.sleep(0.1)  # a polling interval, not synchronisation: the deadline bounds it
    return time.monotonic() - start


async def test_a_malformed_parent_domain_cookie_breaks_neither_login_nor_session(
    stack: Stack,
) -> None:
    world = await start_world(stack, push=False)
    pod = await start_pod(world, "alice", recheck_s=300)
    # A sibling's app set "sib=a b" for the parent domain: the browser sends it here too.
    planted = "sib=a b; "
    session, _ = await log_in(world, pod, "alice", planted=planted)  # was: callback 400
    through = await get(world, pod, "/headers", f"{planted}{SESSION}={session}")
    assert through.status_code == 200  # was: 302, back to the login
    assert through.json()["x-hostmux-user"] == ["alice"]


async def test_a_user_removed_from_sharing_is_out_within_access_recheck_s(stack: Stack) -> None:
    # No router CA for the portal: its push fails, so the re-check alone must do it.
    world = await start_world(stack, push=False)
    pod = await start_pod(world, "bob", recheck_s=RECHECK_S)
    async with world.portal.admin() as admin:
        shared = await admin.post(f"/instances/{pod.instance_id}/shares", json={"user": "alice"})
        assert shared.status_code == 204
        session, _ = await log_in(world, pod, "alice")
        assert (await get(world, pod, "/headers", f"{SESSION}={session}")).status_code == 200
        removed = await admin.delete(f"/instances/{pod.instance_id}/shares/alice")
        assert removed.status_code == 204
        again = await admin.delete(f"/instances/{pod.instance_id}/shares/alice")
        assert again.status_code == 404
    await world.portal.proc.wait_for(r"revocation_push .*user=alice status=failed")
    took = await refused_within(world, pod, session, RECHECK_S + SLACK_S)
    assert took <= RECHECK_S + SLACK_S
    await pod.helper.wait_for(r"event=access_withdrawn .*user=alice")


async def test_logout_revokes_and_the_revocation_survives_a_restart(stack: Stack) -> None:
    world = await start_world(stack, push=True)
    pod = await start_pod(world, "alice", recheck_s=300)
    session, portal_cookies = await log_in(world, pod, "alice")
    cookie = f"{SESSION}={session}"
    origin = world.router.url(pod.instance_id)
    page = await get(world, pod, "/_hostmux/logout", cookie)  # a GET changes nothing
    assert page.status_code == 200
    action = page.text.split('action="')[1].split('"')[0].replace("&amp;", "&")
    assert (await get(world, pod, "/headers", cookie)).status_code == 200

    async def post_logout(path: str, **headers: str) -> httpx.Response:
        return await get(world, pod, path, cookie, method="POST", **headers)

    sibling = world.router.url("someone-else")
    assert (await post_logout(action, origin=sibling)).status_code == 403
    assert (await post_logout(action, **{"sec-fetch-site": "same-site"})).status_code == 403
    assert (await post_logout(action)).status_code == 403  # neither Origin nor Sec-Fetch-Site
    assert (await post_logout("/_hostmux/logout?token=x", origin=origin)).status_code == 403
    assert (await get(world, pod, "/headers", cookie)).status_code == 200  # still logged in
    out = await post_logout(action, origin=origin, **{"sec-fetch-site": "same-origin"})
    assert out.status_code == 303
    assert out.headers["location"] == world.portal.url + "/logout"
    refused = await get(world, pod, "/headers", cookie)  # the copy taken before logout
    assert refused.status_code == 302
    assert "/oauth/authorize" in refused.headers["location"]

    # The portal still holds the grant (the portal's logout was not followed), so only
    # the revocation kept in state_dir refuses the cookie after a restart.
    assert await pod.helper.stop() == 0
    pod.helper, _ = await _start_helper(
        stack, pod.env, [*pod.helper_args, "--listen", f"127.0.0.1:{pod.helper_port}"]
    )
    assert (await get(world, pod, "/headers", cookie)).status_code == 302

    # A second login, then the portal's logout: its push ends that session at once.
    session, portal_cookies = await log_in(world, pod, "alice")
    assert (await get(world, pod, "/headers", f"{SESSION}={session}")).status_code == 200
    async with httpx.AsyncClient(base_url=world.portal.url, cookies=portal_cookies) as portal:
        assert (await portal.get("/logout")).status_code == 200
    await world.portal.proc.wait_for(rf"revocation_push instance={pod.instance_id} .*status=200")
    assert (await get(world, pod, "/headers", f"{SESSION}={session}")).status_code == 302
    await pod.helper.wait_for(r"event=sessions_revoked .*user=alice")
