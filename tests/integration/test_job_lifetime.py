"""Routes bound to a job's lifetime: portal certificates end their tunnels at expiry.

The example portal signs short certificates (principal = instance id); the
router closes a tunnel when its certificate's ``valid_before`` passes, tells the
portal why in a signed ``tunnel_down`` event and frees the name at once (no
reconnect reservation). The listener renews its certificate from the portal
before expiry when the portal allows it, and swaps connections without a gap.
Real processes on loopback (OpenSSH, the router, the portal, the listener).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import trio

import keys

from .cluster_world import holders
from .conftest import LoggedProcess, Router, Stack, public_key_of
from .redis_server import RedisServer
from .test_listener_ha import ha_listener_argv
from .test_portal_mode import Portal, start_portal, start_portal_router, write_private_key

# How late after ``valid_before`` the router may close the tunnel: the timer fires on
# time, but a 2-core machine running a router, a portal, ssh and an app may lag.
_LATE_S = 3.0
# valid_before is whole seconds; the router's clock may be just under it when it looks.
_EARLY_S = 0.05


async def _certificate(portal: Portal, instance_id: str, public_line: str, valid_for_s: int) -> str:
    async with portal.admin() as client:
        response = await client.post(
            f"/instances/{instance_id}/certificate",
            json={"public_key": public_line, "valid_for_s": valid_for_s},
        )
    assert response.status_code == 200, response.text
    return str(response.json()["certificate"])


async def _events(portal: Portal, name: str) -> list[dict[str, Any]]:
    """The events the portal received for ``name`` (it keeps only signed, verified ones)."""
    async with portal.admin() as client:
        response = await client.get("/admin/events")
    assert response.status_code == 200, response.text
    return [event for event in response.json() if event["name"] == name]


async def _delivered(router: Router, portal: Portal, name: str, kind: str, start: int) -> Any:
    """The last ``kind`` event for ``name`` the portal received, once the router says it
    delivered one (the portal answered 2xx)."""
    await router.proc.wait_for(
        rf"event=portal_event_delivered kind={kind} name={name}\b", start=start
    )
    events = [event for event in await _events(portal, name) if event["event"] == kind]
    assert events, f"the router delivered a {kind} the portal did not keep"
    return events[-1]


async def _set_policy(portal: Portal, instance_id: str, renew: bool, valid_for_s: int) -> None:
    async with portal.admin() as client:
        response = await client.put(
            f"/instances/{instance_id}/certificate-policy",
            json={"renew": renew, "valid_for_s": valid_for_s},
        )
    assert response.status_code == 200, response.text


async def test_a_certificate_ends_its_tunnel_at_expiry_and_the_portal_hears_why(
    stack: Stack,
) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    app = await stack.start_app()
    instance = await portal.create_instance("erin")
    name = instance["id"]
    own_key = stack.new_key("job")
    public_line = public_key_of(own_key).read_text().strip()
    cert = stack.path("job-cert.pub")
    line = await _certificate(portal, name, public_line, 10)
    cert.write_text(line + "\n")
    valid_before = keys.certificate_validity(line).valid_before
    assert valid_before is not None

    ssh = await stack.spawn(
        "ssh-job",
        stack.ssh_argv(
            router, own_key, "-o", f"CertificateFile={cert}", "-N",
            "-R", f"80:127.0.0.1:{app.port}", f"{name}@127.0.0.1",
        ),
    )  # fmt: skip
    mark = len(router.proc.lines)
    await router.proc.wait_for(
        rf"event=ssh_connect .*owner=instance:{name} .*expires={valid_before} "
    )
    await router.proc.wait_for(rf"event=tunnel_up name={name} ")
    assert (await router.get(name, "/")).status_code == 200

    # At expiry: the tunnel ends (the router's timer), and OpenSSH exits with it.
    await router.proc.wait_for(rf"event=ssh_certificate_expired .*tunnels={name}\b")
    closed_at = time.time()
    assert valid_before - _EARLY_S <= closed_at <= valid_before + _LATE_S
    await router.proc.wait_for(rf"event=tunnel_down name={name} .*reason=certificate_expired")
    assert await ssh.wait_exit() != 0
    assert time.time() >= valid_before - _EARLY_S
    assert (await router.get(name, "/")).status_code != 200

    # The portal got it, signed (it keeps only events whose signature verified), with why.
    down = await _delivered(router, portal, name, "tunnel_down", mark)
    assert down["v"] == 1
    assert down["data"]["reason"] == "certificate_expired"
    assert down["data"]["url"] == router.url(name)
    assert (await portal.instance(name))["tunnel"]["state"] == "down"  # type: ignore[index]

    # The same instance's next job: a new certificate claims the name again at once.
    line = await _certificate(portal, name, public_line, 6)
    cert.write_text(line + "\n")
    mark = len(router.proc.lines)
    next_job = await stack.spawn(
        "ssh-next-job",
        stack.ssh_argv(
            router, own_key, "-o", f"CertificateFile={cert}", "-N",
            "-R", f"80:127.0.0.1:{app.port}", f"{name}@127.0.0.1",
        ),
    )  # fmt: skip
    await router.proc.wait_for(rf"event=tunnel_up name={name} ", start=mark)
    assert (await router.get(name, "/")).status_code == 200
    await router.proc.wait_for(
        rf"event=tunnel_down name={name} .*reason=certificate_expired", start=mark
    )
    assert await next_job.wait_exit() != 0

    # No reservation held for a job that ended: an operator key (any name) may take the
    # name at once — within name_reservation_s (600 s) it would be refused as another key's.
    operator = stack.new_key("operator")
    router.authorize(public_key_of(operator))
    mark = len(router.proc.lines)
    await stack.openssh_tunnel(router, operator, name, app.port)
    assert router.proc.find(r"event=forward_refused", start=mark) is None
    assert (await router.get(name, "/")).status_code == 200


async def test_a_plain_key_tunnel_keeps_the_reservation(stack: Stack) -> None:
    """The contrast: a tunnel that merely went away keeps its name reserved for its owner."""
    router = await stack.start_router("--name-reservation-s", "600")
    app = await stack.start_app()
    owner, other = stack.new_key("owner"), stack.new_key("other")
    router.authorize(public_key_of(owner))
    router.authorize(public_key_of(other))
    ssh = await stack.openssh_tunnel(router, owner, "held", app.port)
    await ssh.stop()
    await router.proc.wait_for(r"event=tunnel_down name=held ")
    mark = len(router.proc.lines)
    taker = await stack.openssh_tunnel(router, other, "held", app.port, wait=False)
    assert await taker.wait_exit() != 0
    await router.proc.wait_for(r"event=forward_refused .*listen=held:80 ", start=mark)


# The renewal tests' request loop: bounded in count and time.
_MAX_REQUESTS = 20_000
_LOOP_DEADLINE_S = 60.0
# Requests in flight at once (so some are in flight at each swap).
_WORKERS = 3
# With two routers: two through each.
_HA_WORKERS = 4


class _Load:
    """The renewal tests' request loop, and what it saw."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {"ok": 0, "failed": 0}
        self.failures: list[str] = []
        self.done = trio.Event()

    async def requests(self, router: Router, name: str, worker: int) -> None:
        """Requests through ``router``, some on a kept-alive connection, some on fresh
        ones: small GETs, 1 MiB downloads and 256 KiB uploads (a POST is never retried by
        the router, and a download spans many packets: both fail if a connection they
        are on is closed under them)."""
        upload = bytes(range(256)) * 1024
        async with router.client() as kept, router.client() as fresh:
            with trio.move_on_after(_LOOP_DEADLINE_S):
                for number in range(_MAX_REQUESTS):
                    if self.done.is_set():
                        return
                    kind = (number + worker) % 3
                    client = kept if number % 2 else fresh
                    headers = {} if number % 2 else {"connection": "close"}
                    try:
                        if kind == 0:
                            request = router.request(client, "GET", name, "/", headers=headers)
                        elif kind == 1:
                            request = router.request(
                                client, "GET", name, f"/bytes?n={1 << 20}", headers=headers
                            )
                        else:
                            request = router.request(
                                client, "POST", name, "/upload", headers=headers, content=upload
                            )
                        response = await client.send(request)
                        good = (
                            response.status_code == 200
                            and (kind != 1 or len(response.content) == 1 << 20)
                            and (kind != 2 or response.json()["bytes"] == len(upload))
                        )
                        said = f"{response.status_code} {response.text[:100]!r}"
                    except httpx.HTTPError as exc:
                        good, said = False, repr(exc)
                    if good:
                        self.outcomes["ok"] += 1
                    else:
                        self.outcomes["failed"] += 1
                        self.failures.append(f"{router.ssh_port} worker {worker} #{number} "
                                             f"kind {kind}: {said}")  # fmt: skip


async def _job_listener(
    stack: Stack, router: Router, portal: Portal, instance: dict[str, str], valid_for_s: int
) -> tuple[LoggedProcess, Path]:
    """hostmux-listener as instance ``instance`` with a fresh ``valid_for_s`` certificate."""
    key = write_private_key(stack, instance)
    cert = stack.path("listener-cert.pub")
    line = await _certificate(portal, instance["id"], instance["public_key"], valid_for_s)
    cert.write_text(line + "\n")
    app = await stack.start_app()
    argv = [
        *stack.listener_argv(router, key, app.port),
        "--user", instance["id"], "--certificate-file", str(cert),
        "--certificate-url", f"{portal.url}/instances/{instance['id']}/certificate",
        "--no-check-url",
    ]  # fmt: skip
    return await stack.spawn("listener", argv), cert


async def test_the_listener_renews_twice_and_no_request_fails_across_the_swaps(
    stack: Stack,
) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    instance = await portal.create_instance("frank", key_type="ed25519")
    name = instance["id"]
    await _set_policy(portal, name, renew=True, valid_for_s=9)
    listener, cert = await _job_listener(stack, router, portal, instance, 9)
    first = await router.proc.wait_for(rf"event=ssh_connect peer=(\S+) owner=instance:{name} ")
    await router.proc.wait_for(rf"event=tunnel_up name={name} ")
    mark = len(router.proc.lines)
    first_expiry = keys.certificate_validity(cert.read_text()).valid_before

    load = _Load()
    async with trio.open_nursery() as nursery:
        for worker in range(_WORKERS):
            nursery.start_soon(load.requests, router, name, worker)
        await listener.wait_for(r"event=tunnel_swapped ")
        swapped = next(i for i, line in enumerate(listener.lines) if "tunnel_swapped" in line)
        # The first connection goes (its grace, or its certificate's end at the router).
        await router.proc.wait_for(rf"event=ssh_disconnect peer={first[1]} ", start=mark)
        await listener.wait_for(r"event=tunnel_swapped ", start=swapped + 1)
        load.done.set()

    assert load.failures == [], load.failures[:10]
    assert load.outcomes["ok"] >= 30, load.outcomes  # the loop ran across both swaps
    assert len([line for line in listener.lines if "event=certificate_renewed" in line]) >= 2
    later_expiry = keys.certificate_validity(cert.read_text()).valid_before
    assert first_expiry is not None and later_expiry is not None
    assert later_expiry > first_expiry  # the file holds the newest certificate
    # The name never went down: no tunnel_down at the router, so none to the portal.
    assert router.proc.find(rf"event=tunnel_down name={name} ", start=mark) is None
    assert (await router.get(name, "/")).status_code == 200


async def test_when_the_portal_denies_renewal_the_tunnel_ends_at_expiry(stack: Stack) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(stack, portal)
    instance = await portal.create_instance("grace", key_type="ed25519")
    name = instance["id"]
    await _set_policy(portal, name, renew=False, valid_for_s=8)
    listener, cert = await _job_listener(stack, router, portal, instance, 8)
    valid_before = keys.certificate_validity(cert.read_text()).valid_before
    assert valid_before is not None
    await router.proc.wait_for(rf"event=tunnel_up name={name} ")
    mark = len(router.proc.lines)
    assert (await router.get(name, "/")).status_code == 200

    await listener.wait_for(r"event=certificate_renewal_refused .*status 403")
    await router.proc.wait_for(rf"event=tunnel_down name={name} .*reason=certificate_expired")
    assert time.time() >= valid_before - _EARLY_S
    down = await _delivered(router, portal, name, "tunnel_down", mark)
    assert down["data"]["reason"] == "certificate_expired"
    # The listener cannot come back with the expired certificate (nor its bare key).
    await listener.wait_for(r"event=tunnel_failed .*refused our certificate")
    assert router.proc.find(rf"event=tunnel_up name={name} ", start=mark) is None
    assert (await router.get(name, "/")).status_code == 503  # the portal knows it: holding


async def test_in_a_cluster_the_registry_frees_the_name_of_a_job_that_ended(
    stack: Stack, redis_server: RedisServer
) -> None:
    portal = await start_portal(stack)
    router = await start_portal_router(
        stack, portal, "--registry", redis_server.url, "--router-id", "r1"
    )
    app = await stack.start_app()
    instance = await portal.create_instance("heidi")
    name = instance["id"]
    own_key = stack.new_key("cluster-job")
    cert = stack.path("cluster-job-cert.pub")
    cert.write_text(await _certificate(portal, name, public_key_of(own_key).read_text(), 6) + "\n")
    ssh = await stack.spawn(
        "ssh-cluster-job",
        stack.ssh_argv(
            router, own_key, "-o", f"CertificateFile={cert}", "-N",
            "-R", f"80:127.0.0.1:{app.port}", f"{name}@127.0.0.1",
        ),
    )  # fmt: skip
    await router.proc.wait_for(rf"event=tunnel_up name={name} ")
    assert set(holders(redis_server, name)) == {"r1"}
    mark = len(router.proc.lines)
    await router.proc.wait_for(rf"event=tunnel_down name={name} .*reason=certificate_expired")
    assert await ssh.wait_exit() != 0
    await router.proc.wait_for(rf"event=registry_released_tunnel name={name} ", start=mark)
    # Free in the registry, not reserved for the instance: no key for the name is left.
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    try:
        assert client.exists(f"hostmux:name:{name}", f"hostmux:holders:{name}") == 0
    finally:
        client.close()


@pytest.mark.parametrize("pool", [False, True], ids=["own-name", "pool"])
async def test_ha_connections_renew_once_and_swap_on_both_routers_with_no_failed_request(
    stack: Stack, redis_server: RedisServer, pool: bool
) -> None:
    """Two routers on one registry, a listener with two connections (one to each) and
    12-second certificates: one renewal per certificate for the process, each renewal
    swaps both connections (new one on the same router, then the old one goes), and a
    request loop through both routers sees no failure across two renewals."""
    portal = await start_portal(stack)
    cluster = ("--registry", redis_server.url)
    a = await start_portal_router(stack, portal, *cluster, "--router-id", "a")
    b = await start_portal_router(stack, portal, *cluster, "--router-id", "b")
    instance = await portal.create_instance("ivan", key_type="ed25519")
    name = instance["id"]
    await _set_policy(portal, name, renew=True, valid_for_s=12)
    key = write_private_key(stack, instance)
    cert = stack.path("ha-cert.pub")
    cert.write_text(await _certificate(portal, name, instance["public_key"], 12) + "\n")
    app = await stack.start_app()
    extra = (
        "--user", name, "--certificate-file", str(cert),
        "--certificate-url", f"{portal.url}/instances/{name}/certificate", "--no-check-url",
        "--ha-connections", "2", *(("--pool",) if pool else ()),
    )  # fmt: skip
    listener = await stack.spawn("listener", ha_listener_argv(key, app.port, a, b, extra=extra))
    await listener.wait_for(r"event=connections_full up=2 wanted=2")
    firsts = {}
    for router in (a, b):
        found = await router.proc.wait_for(rf"event=ssh_connect peer=(\S+) owner=instance:{name} ")
        firsts[router.ssh_port] = found[1]
    marks = {router.ssh_port: len(router.proc.lines) for router in (a, b)}
    assert set(holders(redis_server, name)) == {"a", "b"}

    load = _Load()
    async with trio.open_nursery() as nursery:
        for worker in range(_HA_WORKERS):
            nursery.start_soon(load.requests, (a, b)[worker % 2], name, worker)
        seen = 0
        for _ in range(4):  # two renewals, each swapping both connections
            await listener.wait_for(r"event=tunnel_swapped ", start=seen)
            seen = 1 + next(
                i for i in range(seen, len(listener.lines))
                if "event=tunnel_swapped " in listener.lines[i]
            )  # fmt: skip
        # Both first connections went (their grace, or their certificates' end).
        for router in (a, b):
            peer = firsts[router.ssh_port]
            await router.proc.wait_for(
                rf"event=ssh_disconnect peer={peer} ", start=marks[router.ssh_port]
            )
        load.done.set()

    assert load.failures == [], load.failures[:10]
    assert load.outcomes["ok"] >= 30, load.outcomes  # the loop ran across both renewals
    swapped = [line for line in listener.lines if "event=tunnel_swapped " in line]
    assert sorted(line.split(" conn=")[1][0] for line in swapped[:4]) == ["0", "0", "1", "1"]
    # One renewal per certificate for the process: the portal signed the first one and
    # one per renewal the listener logged, not one per connection.
    renewed = sum("event=certificate_renewed " in line for line in listener.lines)
    async with portal.admin() as client:
        stats = (await client.get("/admin/stats")).json()
    assert renewed >= 2
    assert stats["certificates"] == 1 + renewed, (stats, renewed)
    # Each router moved the name to the new connection (same owner), and it never went
    # down: no tunnel_down anywhere, both routers still hold it in the registry.
    member_ids: set[str] = set()
    for router in (a, b):
        start, first = marks[router.ssh_port], firsts[router.ssh_port]
        event = "pool_member_up" if pool else "tunnel_up"
        moved = await router.proc.wait_for(
            rf"event={event} name={name} .*replaced={first}\b", start=start
        )
        assert router.proc.find(rf"event=tunnel_down name={name} ", start=start) is None
        assert (await router.get(name, "/")).status_code == 200
        if pool:
            assert "members=1 " in moved.string + " "  # replaced, not a second member
            member_ids |= {
                m[1]
                for line in router.proc.lines
                if (m := re.search(rf"event=pool(?:_member)?_up name={name} .*member=(\w+)", line))
            }
    if pool:
        assert len(member_ids) == 1, member_ids  # one pool member id across every swap
    assert set(holders(redis_server, name)) == {"a", "b"}
    assert (
        listener.find(r"event=(tunnel_down|connection_down|tunnel_swap_failed|url_publish_failed) ")
        is None
    )
