"""The whole system in a real browser: portal login, auth helper, router, listener, app.

Debian's Chromium, driven by Selenium with Debian's chromedriver, trusts the
router's development CA through its own NSS database (real TLS, no
"ignore certificate errors"); ``*.localhost`` resolves to loopback inside
Chromium. Selenium is synchronous, so its calls run in a worker thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from examples.portal.pods import instance_environment

from .conftest import START_TIMEOUT_S, LoggedProcess, Router, Stack
from .test_portal_mode import (
    Portal,
    dit4c_listener,
    start_portal,
    start_portal_router,
    write_private_key,
)

T = TypeVar("T")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="Debian chromium + chromium-driver not installed (./dev test installs them)",
)


class Browser:
    """A headless Chromium trusting one CA; every call runs in a thread."""

    def __init__(self, profile: Path, ca_cert: Path) -> None:
        home = profile / "home"
        nss = home / ".pki" / "nssdb"
        nss.mkdir(parents=True)
        subprocess.run(["certutil", "-d", f"sql:{nss}", "-N", "--empty-password"], check=True)
        subprocess.run(
            [
                "certutil",
                "-d",
                f"sql:{nss}",
                "-A",
                "-t",
                "C,,",
                "-n",
                "hostmux-dev",
                "-i",
                str(ca_cert),
            ],
            check=True,
        )
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile / 'chrome'}",
            "--window-size=1100,800",
        ):
            options.add_argument(flag)
        service = Service("/usr/bin/chromedriver", env={**os.environ, "HOME": str(home)})
        self.driver = webdriver.Chrome(options=options, service=service)

    async def run(self, work: Callable[[webdriver.Chrome], T]) -> T:
        return await trio.to_thread.run_sync(work, self.driver)

    async def open(self, url: str) -> None:
        await self.run(lambda d: d.get(url))

    async def wait_until(self, condition: Callable[[webdriver.Chrome], Any], what: str) -> None:
        def wait(driver: webdriver.Chrome) -> None:
            try:
                WebDriverWait(driver, START_TIMEOUT_S).until(condition)
            except TimeoutException:
                raise AssertionError(
                    f"browser: {what} did not happen; at {driver.current_url}:\n"
                    f"{driver.page_source[:2000]}"
                ) from None

        await self.run(wait)

    async def login(self, user: str) -> None:
        await self.wait_until(lambda d: "/login" in d.current_url, "the portal login page")

        def fill(driver: webdriver.Chrome) -> None:
            driver.find_element(By.ID, "username").send_keys(user)
            driver.find_element(By.ID, "password").send_keys(PASSWORDS[user])
            driver.find_element(By.ID, "login").click()

        await self.run(fill)

    async def text(self) -> str:
        return await self.run(lambda d: d.find_element(By.TAG_NAME, "body").text)

    def close(self) -> None:
        self.driver.quit()


@dataclass
class Pod:
    instance_id: str
    url: str
    helper: LoggedProcess
    listener: LoggedProcess


@dataclass
class World:
    stack: Stack
    portal: Portal
    router: Router
    pods: dict[str, Pod]


async def start_pod(stack: Stack, portal: Portal, router: Router, owner: str) -> Pod:
    instance = await portal.create_instance(owner)
    app = await stack.start_app()
    return await pod_for(stack, router, instance, owner, app.port)


async def pod_for(
    stack: Stack, router: Router, instance: dict[str, str], owner: str, app_port: int
) -> Pod:
    """The auth helper in front of the app at ``app_port``, and the listener, for
    ``instance`` (as the portal's create call returned it)."""
    key = write_private_key(stack, instance)
    env = {
        **os.environ,
        **instance_environment(instance, key),
        "HOSTMUX_ROUTER_CA_FILE": str(router.ca_cert),
    }
    helper = await stack.spawn(
        f"helper-{owner}",
        [
            sys.executable,
            "-m",
            "authhelper",
            "--listen",
            "127.0.0.1:0",
            "--app",
            f"127.0.0.1:{app_port}",
            "--cookie-keys-file",
            str(stack.path(f"{owner}-cookies")),
            "--state-dir",
            str(stack.path(f"{owner}-helper-state")),
        ],
        env=env,
    )
    ready = await helper.wait_for(r"event=authhelper_ready listen=127\.0\.0\.1:(\d+)")
    listener = await stack.spawn(
        f"listener-{owner}",
        [sys.executable, "-m", "listener", "--target", f"127.0.0.1:{ready[1]}"],
        env=env,
    )
    await listener.wait_for(r"event=url_published ")
    return Pod(instance["id"], router.url(instance["id"]), helper, listener)


@pytest.fixture
async def world(stack: Stack) -> World:
    users = [arg for name, pw in PASSWORDS.items() for arg in ("--user", f"{name}:{pw}")]
    # The portal pushes revocations through the router: it trusts the router's dev CA,
    # which the router creates in its state directory when it starts.
    router_state = stack.path("router-state")
    ca = ["--router-ca-file", str(router_state / "tls" / "dev-ca.pem")]
    portal = await start_portal(stack, None, 0, *users, *ca)
    # authlib allows plain http only to "localhost": the browser must use that name.
    portal.url = portal.url.replace("127.0.0.1", "localhost")
    router = await start_portal_router(stack, portal, state_dir=router_state)
    pods = {owner: await start_pod(stack, portal, router, owner) for owner in ("alice", "bob")}
    return World(stack, portal, router, pods)


@pytest.fixture
async def browser(tmp_path: Path, world: World) -> AsyncIterator[Browser]:
    chrome = await trio.to_thread.run_sync(Browser, tmp_path / "browser", world.router.ca_cert)
    try:
        yield chrome
    finally:
        await trio.to_thread.run_sync(chrome.close)


async def test_login_app_websocket_sharing_and_logout(world: World, browser: Browser) -> None:
    alice, bob = world.pods["alice"], world.pods["bob"]

    # A fresh browser opens alice's instance: portal login, then the app.
    await browser.open(alice.url + "/")
    await browser.login("alice")
    await browser.wait_until(lambda d: d.current_url.startswith(alice.url), "the way back")
    await browser.wait_until(
        lambda d: d.find_element(By.ID, "echo").text == "hello", "a WebSocket echo"
    )
    text = await browser.text()
    assert "hostmux sample app" in text
    assert "alice" in text  # X-Hostmux-User, set by the helper
    ARTIFACTS.mkdir(exist_ok=True)
    await browser.run(lambda d: d.save_screenshot(str(ARTIFACTS / "browser-app-page.png")))

    # The session cookie is host-only and __Host- prefixed.
    cookies = await browser.run(lambda d: d.get_cookies())
    session = [c for c in cookies if c["name"] == "__Host-hostmux-session"]
    assert len(session) == 1
    assert session[0]["secure"] and session[0]["httpOnly"] and session[0]["sameSite"] == "Lax"
    assert session[0]["domain"] == f"{alice.instance_id}.localhost"  # no Domain attribute

    # The portal shows alice her instance with its live URL.
    await browser.open(world.portal.url + "/")
    await browser.wait_until(lambda d: alice.url in d.page_source, "alice's URL on the portal")
    await browser.run(lambda d: d.save_screenshot(str(ARTIFACTS / "browser-portal-page.png")))
    assert bob.instance_id not in await browser.text()

    # bob's instance: alice is logged in at the portal, but may not use it.
    await browser.open(bob.url + "/")
    await browser.wait_until(lambda d: "may not use this instance" in d.page_source, "a 403")
    way_out = await browser.run(lambda d: d.find_element(By.ID, "way-out").get_attribute("href"))
    assert way_out == world.portal.url + "/logout"
    cookies_on_bob = await browser.run(lambda d: d.get_cookies())
    assert not [c for c in cookies_on_bob if c["name"] == "__Host-hostmux-session"]

    # ...until bob shares it with her.
    async with world.portal.admin() as client:
        shared = await client.post(f"/instances/{bob.instance_id}/shares", json={"user": "alice"})
    assert shared.status_code == 204
    await browser.open(bob.url + "/")
    await browser.wait_until(lambda d: "hostmux sample app" in d.page_source, "bob's app")

    # The portal restarting does not end existing sessions.
    await world.portal.proc.stop()
    await browser.open(alice.url + "/headers")
    await browser.wait_until(lambda d: "x-hostmux-user" in d.page_source, "the app, portal down")

    # Logout ends the instance session (and the portal's) — and revokes it: a copy of
    # the cookie taken before logout is refused after it.
    ca = world.router.state_dir / "tls" / "dev-ca.pem"
    restarted = await start_portal(
        world.stack, world.portal.state_dir, _port(world.portal), "--router-ca-file", str(ca)
    )
    assert restarted.url.endswith(world.portal.url.rsplit(":", 1)[1])
    copied = await _session_cookie(browser)
    assert (await _get(world, alice, "/headers", copied)).status_code == 200
    await browser.open(alice.url + "/_hostmux/logout")  # a GET only asks
    await browser.wait_until(lambda d: d.find_elements(By.ID, "logout"), "the logout button")
    assert (await _get(world, alice, "/headers", copied)).status_code == 200
    await browser.run(lambda d: d.find_element(By.ID, "logout").click())
    await browser.wait_until(lambda d: "Logged out" in d.page_source, "the portal's logout page")
    after = await _get(world, alice, "/headers", copied)
    assert after.status_code == 302
    assert "/oauth/authorize" in after.headers["location"]
    await browser.open(alice.url + "/")
    await browser.wait_until(lambda d: "/login" in d.current_url, "a new login")


async def _session_cookie(browser: Browser) -> str:
    cookies = await browser.run(lambda d: d.get_cookies())
    return str(next(c["value"] for c in cookies if c["name"] == "__Host-hostmux-session"))


async def _get(world: World, pod: Pod, path: str, cookie: str | None) -> httpx.Response:
    async with world.router.client() as client:
        headers = {"cookie": f"__Host-hostmux-session={cookie}"} if cookie else {}
        return await client.send(
            world.router.request(client, "GET", pod.instance_id, path, headers=headers)
        )


def _port(portal: Portal) -> int:
    return int(portal.url.rsplit(":", 1)[1])


async def test_cookies_and_states_that_are_not_ours_are_refused(
    world: World, browser: Browser
) -> None:
    alice, bob = world.pods["alice"], world.pods["bob"]
    await browser.open(alice.url + "/")
    await browser.login("alice")
    await browser.wait_until(lambda d: "hostmux sample app" in d.page_source, "alice's app")
    sealed = await _session_cookie(browser)

    async def get(pod: Pod, path: str, cookie: str | None) -> httpx.Response:
        return await _get(world, pod, path, cookie)

    assert (await get(alice, "/headers", sealed)).status_code == 200  # the real thing works
    # alice's cookie carried to bob's instance (as app A setting it for B would): refused.
    foreign = await get(bob, "/headers", sealed)
    assert foreign.status_code == 302
    assert "/oauth/authorize" in foreign.headers["location"]
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    assert (await get(alice, "/headers", tampered)).status_code == 302
    assert (await get(alice, "/headers", "not-a-cookie")).status_code == 302
    # A callback whose state was not issued to this browser for this instance: refused.
    replayed = await get(alice, "/_hostmux/callback?code=abc&state=stolen", None)
    assert replayed.status_code == 400
    # After a login, the browser returns to a path on the same host, whatever it asked for.
    login = await get(alice, "//evil.example/%2F..", None)
    assert login.status_code == 302
    assert login.headers["location"].startswith(world.portal.url + "/oauth/authorize")


async def test_the_holding_page_becomes_the_app_by_itself(stack: Stack, tmp_path: Path) -> None:
    """Issue 21's acceptance: an instance the portal created, its listener not started:
    503 "starting…" that reloads itself, then the app, with nobody touching the browser."""
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    instance = await portal.create_instance("alice")
    key = write_private_key(stack, instance)
    app = await stack.start_app()
    chrome = await trio.to_thread.run_sync(Browser, tmp_path / "browser", router.ca_cert)
    try:
        await chrome.open(router.url(instance["id"]) + "/headers")
        await chrome.wait_until(lambda d: d.find_elements(By.ID, "starting"), "the holding page")
        assert f"Starting {instance['id']}" in await chrome.text()
        listener = await dit4c_listener(stack, router, instance, key, app)
        await listener.wait_for(r"event=tunnel_up|event=url_published ")
        # No click, no reload from here: the page's own refresh brings the app.
        await chrome.wait_until(lambda d: '"_server"' in d.page_source, "the app")
        assert '"_server"' in await chrome.text()
    finally:
        await trio.to_thread.run_sync(chrome.close)
