"""The visitor audit end to end (issue 21, point 3): who used a shared instance.

Real processes on loopback: the example portal, a router in portal mode, a
listener, the auth helper (started from a DIT4C pod's environment, so it signs
with the instance key the portal made) and the sample app. Logins are driven
with httpx as a browser would follow them. Every wait has a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time

import httpx
import trio

import keys
from examples.portal.pods import instance_environment

from .conftest import Stack
from .test_portal_mode import Portal, start_portal, write_private_key
from .test_sessions import PASSWORDS, SESSION, Pod, World, get, log_in, start_world

# The tests' flush interval: records reach the portal within this (plus a request).
FLUSH_S = 0.2
# How long the portal page may take to show what the helper sent (a loaded 2-core machine).
SHOWN_WITHIN_S = 30.0
_VISITOR_ROW = re.compile(
    r"<tr class=visitor><td class=visitor-user>([^<]*)</td><td class=visitor-last-seen>"
    r"[^<]*</td><td class=visitor-requests>(\d+)</td><td>(\d+)</td><td>([^<]*)</td></tr>"
)


async def start_pod(world: World, owner: str, *helper_args: str) -> Pod:
    """An instance of ``owner`` with its helper, app and listener, as a DIT4C pod starts."""
    stack = world.stack
    instance = await world.portal.create_instance(owner)
    key = write_private_key(stack, instance)
    app = await stack.start_app()
    env = {**os.environ, **instance_environment(instance, key),
           "HOSTMUX_ROUTER_CA_FILE": str(world.router.ca_cert)}  # fmt: skip
    args = [
        "--app", f"127.0.0.1:{app.port}", "--cookie-keys-file", str(stack.path("cookies")),
        "--audit-flush-interval-s", str(FLUSH_S), *helper_args,
    ]  # fmt: skip
    helper = await stack.spawn(
        "helper", [sys.executable, "-m", "authhelper", *args, "--listen", "127.0.0.1:0"], env=env
    )
    ready = await helper.wait_for(r"event=authhelper_ready listen=127\.0\.0\.1:(\d+)")
    listener = await stack.spawn(
        "listener",
        [sys.executable, "-m", "listener", "--target", f"127.0.0.1:{ready[1]}"],
        env=env,
    )
    await listener.wait_for(r"event=url_published ")
    return Pod(instance["id"], helper, int(ready[1]), args, env)


async def share(portal: Portal, instance_id: str, user: str) -> None:
    async with portal.admin() as admin:
        shared = await admin.post(f"/instances/{instance_id}/shares", json={"user": user})
    assert shared.status_code == 204, shared.text


async def visitors(portal: Portal, cookies: httpx.Cookies, instance_id: str) -> dict[str, int]:
    """user -> requests, as the owner's portal page shows the instance's visitors."""
    async with httpx.AsyncClient(base_url=portal.url, cookies=cookies, timeout=30) as client:
        page = await client.get("/")
    assert page.status_code == 200, page.text
    assert f'id="visitors-{instance_id}"' in page.text, page.text
    table = page.text.split(f'id="visitors-{instance_id}"')[1].split("</table>")[0]
    return {m[1]: int(m[2]) for m in _VISITOR_ROW.finditer(table)}


async def shown_within(
    portal: Portal, cookies: httpx.Cookies, instance_id: str, expected: dict[str, int]
) -> dict[str, int]:
    """Poll the owner's page until it shows ``expected``; fails past SHOWN_WITHIN_S."""
    seen: dict[str, int] = {}
    with trio.move_on_after(SHOWN_WITHIN_S):
        while True:
            seen = await visitors(portal, cookies, instance_id)
            if seen == expected:
                break
            await trio.sleep(0.1)  # a polling interval, not synchronisation: the deadline bounds it
    assert seen == expected
    return seen


async def test_the_owner_sees_who_visited_a_shared_instance(stack: Stack) -> None:
    world = await start_world(stack, push=False)
    pod = await start_pod(world, "alice")
    await share(world.portal, pod.instance_id, "bob")
    alice, alice_portal = await log_in(world, pod, "alice")
    bob, _ = await log_in(world, pod, "bob")
    for _ in range(2):
        assert (await get(world, pod, "/headers", f"{SESSION}={alice}")).status_code == 200
    for query in ("?token=secret", "", ""):
        response = await get(world, pod, f"/headers{query}", f"{SESSION}={bob}")
        assert response.status_code == 200
    assert (await get(world, pod, "/missing", f"{SESSION}={bob}")).status_code == 404

    await shown_within(world.portal, alice_portal, pod.instance_id, {"alice": 2, "bob": 4})
    # Each record is a log line of the helper too: the client as the router saw it, the
    # path without its query, the status.
    helper = pod.helper
    await helper.wait_for(rf"event=visit kind=session ts=\S+ user=bob instance={pod.instance_id} "
                          r"client=127\.0\.0\.1")  # fmt: skip
    await helper.wait_for(r"event=visit kind=request .*user=bob .*client=127\.0\.0\.1 "
                          r"method=GET path=/headers status=200")  # fmt: skip
    await helper.wait_for(r"event=visit kind=request .*user=bob .*path=/missing status=404")
    assert not any("secret" in line for line in helper.lines if "event=visit" in line)
    # Only the owner sees the visitors: bob's page lists the instance without them.
    async with httpx.AsyncClient(base_url=world.portal.url, timeout=30) as client:
        logged_in = await client.post("/login", data={"username": "bob", "password": "bob-pw"})
        assert logged_in.status_code == 303
        page = await client.get("/")
    assert pod.instance_id in page.text
    assert "visitors-" not in page.text


async def test_visits_made_while_the_portal_is_down_arrive_when_it_returns(
    stack: Stack,
) -> None:
    world = await start_world(stack, push=False)
    pod = await start_pod(world, "alice")
    await share(world.portal, pod.instance_id, "bob")
    alice, alice_portal = await log_in(world, pod, "alice")
    await shown_within(world.portal, alice_portal, pod.instance_id, {"alice": 0})

    port = int(world.portal.url.rsplit(":", 1)[1])
    assert await world.portal.proc.stop() == 0
    for _ in range(5):  # the session needs no portal (access_recheck_s is 300 s)
        assert (await get(world, pod, "/headers", f"{SESSION}={alice}")).status_code == 200
    mark = len(pod.helper.lines)
    await pod.helper.wait_for(r"event=audit_send_failed .*waiting=5\b", start=mark)

    users = [arg for name, pw in PASSWORDS.items() for arg in ("--user", f"{name}:{pw}")]
    portal = await start_portal(stack, world.portal.state_dir, port, *users)
    portal.url = world.portal.url
    await shown_within(portal, alice_portal, pod.instance_id, {"alice": 5})
    assert pod.helper.find(r"event=audit_(refused|overflow)") is None


async def test_a_full_queue_counts_what_it_drops_and_flushes_the_rest_on_exit(
    stack: Stack,
) -> None:
    world = await start_world(stack, push=False)
    # Nothing is sent before the helper stops (a batch of 500, an hour's interval):
    # the session record and two requests fill a queue of three.
    pod = await start_pod(
        world, "alice", "--audit-queue-max", "3", "--audit-flush-interval-s", "3600",
        "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    await share(world.portal, pod.instance_id, "bob")
    metrics_at = (await pod.helper.wait_for(r"event=authhelper_ready .*metrics=(\S+)"))[1]
    alice, alice_portal = await log_in(world, pod, "alice")
    for _ in range(6):
        assert (await get(world, pod, "/headers", f"{SESSION}={alice}")).status_code == 200
    await pod.helper.wait_for(r"event=audit_overflow .*total=4 queue_max=3")
    async with httpx.AsyncClient(timeout=30) as client:
        metrics = (await client.get(f"http://{metrics_at}/metrics")).text
    assert 'hostmux_authhelper_audit_records_total{result="overflow"} 4.0' in metrics
    assert "hostmux_authhelper_audit_queued 3.0" in metrics
    assert 'hostmux_authhelper_audit_records_total{result="sent"} 0.0' in metrics
    assert await visitors(world.portal, alice_portal, pod.instance_id) == {}

    assert await pod.helper.stop() == 0  # SIGTERM: what waits is sent before the exit
    await pod.helper.wait_for(r"event=audit_sent .*records=3 ")
    assert await visitors(world.portal, alice_portal, pod.instance_id) == {"alice": 2}


def _signed_batch(
    key: keys.InstanceKey, issuer: str, instance: str, batch: str, *, user: str = "mallory"
) -> tuple[bytes, str]:
    record = {"kind": "request", "ts": time.time(), "user": user, "instance": instance,
              "client": "192.0.2.7", "method": "GET", "path": "/", "status": 200}  # fmt: skip
    body = json.dumps({"v": 1, "instance": instance, "batch": batch, "records": [record]}).encode()
    claims = {"batch_sha256": hashlib.sha256(body).hexdigest()}
    return body, keys.sign_jwt(key, issuer=issuer, claims=claims)


async def test_the_portal_refuses_unsigned_forged_and_other_instances_batches(
    stack: Stack,
) -> None:
    users = [arg for name, pw in PASSWORDS.items() for arg in ("--user", f"{name}:{pw}")]
    portal = await start_portal(stack, None, 0, *users)
    mine, other = await portal.create_instance("alice"), await portal.create_instance("bob")
    my_key = keys.InstanceKey.load(write_private_key(stack, mine))
    other_key = keys.InstanceKey.load(write_private_key(stack, other))
    await share(portal, mine["id"], "bob")
    url = f"/instances/{mine['id']}/audit"

    async with httpx.AsyncClient(base_url=portal.url, timeout=30) as client:

        async def post(body: bytes, token: str | None) -> httpx.Response:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            return await client.post(url, content=body, headers=headers)

        body, token = _signed_batch(my_key, mine["id"], mine["id"], "b-1")
        assert (await post(body, None)).status_code == 401  # unsigned
        forged = token.rsplit(".", 1)[0] + "." + token.rsplit(".", 1)[1][::-1]
        assert (await post(body, forged)).status_code == 401  # the signature does not verify
        body2, token2 = _signed_batch(other_key, other["id"], mine["id"], "b-2")
        assert (await post(body2, token2)).status_code == 401  # another instance's key
        body3, token3 = _signed_batch(my_key, mine["id"], other["id"], "b-3")
        refused = await post(body3, token3)  # signed by mine, for the other instance
        assert refused.status_code == 403, refused.text
        tampered = body.replace(b"mallory", b"mallorx")
        assert (await post(tampered, token)).status_code == 401  # not the signed body
        not_a_batch = b'{"v": 1, "instance": "x"}'
        claims = {"batch_sha256": hashlib.sha256(not_a_batch).hexdigest()}
        bad = await post(not_a_batch, keys.sign_jwt(my_key, issuer=mine["id"], claims=claims))
        assert bad.status_code == 400, bad.text

        body4, token4 = _signed_batch(my_key, mine["id"], mine["id"], "b-4", user="bob")
        stored = await post(body4, token4)
        assert stored.status_code == 200 and stored.json() == {"stored": 1}
        again = await post(body4, token4)  # a retry after a lost answer
        assert again.status_code == 200 and again.json() == {"stored": 0}

        logged_in = await client.post("/login", data={"username": "alice",
                                                      "password": "alice-pw"})  # fmt: skip
        assert logged_in.status_code == 303
        assert await visitors(portal, client.cookies, mine["id"]) == {"bob": 1}


async def test_a_batch_the_portal_refuses_is_dropped_and_the_next_one_still_goes(
    stack: Stack,
) -> None:
    world = await start_world(stack, push=False)
    # A wrong issuer: the portal answers 401 to every batch of this helper.
    pod = await start_pod(world, "alice", "--jwt-iss", "not-this-instance")
    await share(world.portal, pod.instance_id, "bob")
    alice, alice_portal = await log_in(world, pod, "alice")
    await pod.helper.wait_for(r"event=audit_refused .*status=401 records=1 ")  # the login
    mark = len(pod.helper.lines)
    assert (await get(world, pod, "/headers", f"{SESSION}={alice}")).status_code == 200
    await pod.helper.wait_for(r"event=audit_refused .*status=401 records=1 ", start=mark)
    assert pod.helper.find(r"event=audit_send_failed") is None  # a 4xx is not retried
    assert await visitors(world.portal, alice_portal, pod.instance_id) == {}
