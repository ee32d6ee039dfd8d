"""The example portal's API, in process (httpx over ASGI, trio)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
import trio

import keys
from examples.portal.__main__ import main
from examples.portal._app import build_app
from examples.portal._db import Database
from examples.portal._events import sign_event_body
from examples.portal._login import hash_password
from examples.portal._state import PortalState

ADMIN = {"authorization": "Bearer admin-token"}
_URL_RULE = (
    "the URL must be http(s)://lab-2.<domain>[:port] for a router domain (tunnels.test), "
    "or the URL a router reported for it"
)
SECRET = b"events-secret"


@pytest.fixture
async def portal(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _portal_client(tmp_path, SECRET) as client:
        yield client


@contextlib.asynccontextmanager
async def _portal_client(
    state_dir: Path, events_secret: bytes | None
) -> AsyncIterator[httpx.AsyncClient]:
    """The portal app in process, with users alice, bob and one with a hostile name."""
    await trio.Path(state_dir).mkdir(exist_ok=True)
    db = Database(state_dir / "portal.sqlite3")
    state = PortalState(
        db=db, ca=keys.SshCertificateAuthority.generate(), admin_token="admin-token",
        events_secret=events_secret, public_url="http://localhost",
    )  # fmt: skip
    try:
        for user in ("alice", "bob", "<script>alert(1)</script>"):
            await db.ensure_user(user, hash_password("pw-" + user[:5]))
        await db.set_setting("router_domains", ["tunnels.test"])
        transport = httpx.ASGITransport(app=build_app(state, "test-session-secret"))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client
    finally:
        db.close()


async def _create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/instances", json={"owner": "alice", **body}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_instances_keys_and_config(portal: httpx.AsyncClient) -> None:
    created = await _create(portal, id="lab-1")
    key = keys.InstanceKey.from_private_bytes(created["private_key_pem"].encode())
    assert created["kid"] == key.kid
    assert created["uri_update_url"] == "http://localhost/instances/lab-1/url"
    jwks = await portal.get("/instances/lab-1/keys")
    assert jwks.headers["content-type"] == "application/jwk-set+json"
    assert jwks.json() == {"keys": [key.public_jwk()]}
    text = await portal.get("/instances/lab-1/keys", headers={"accept": "text/plain"})
    assert text.text == key.public_openssh() + "\n"
    assert (await portal.get("/instances/nope/keys")).status_code == 404

    given = keys.InstanceKey.generate("ed25519")
    other = await _create(portal, public_key=given.public_openssh())
    assert "private_key_pem" not in other
    assert other["kid"] == given.kid
    assert (await _create_refused(portal, id="lab-1")) == 409

    routers = {"servers": ["127.0.0.1:2222"], "host_keys": [given.public_openssh()]}
    assert (await portal.put("/admin/routers", json=routers, headers=ADMIN)).status_code == 204
    assert (await portal.get("/config.json")).json() == {"router": {"ssh": routers}}


async def _create_refused(client: httpx.AsyncClient, **body: Any) -> int:
    response = await client.post("/instances", json={"owner": "alice", **body}, headers=ADMIN)
    return response.status_code


async def test_admin_endpoints_need_the_token(portal: httpx.AsyncClient) -> None:
    assert (await portal.post("/instances", json={"owner": "x"})).status_code == 401
    wrong = {"authorization": "Bearer nope"}
    assert (await portal.post("/instances", json={"owner": "x"}, headers=wrong)).status_code == 403
    assert (await portal.get("/instances")).status_code == 401
    assert (await portal.put("/admin/routers", json={"servers": []})).status_code == 401


async def test_url_updates_need_the_instance_signature(portal: httpx.AsyncClient) -> None:
    created = await _create(portal, id="lab-2")
    key = keys.InstanceKey.from_private_bytes(created["private_key_pem"].encode())
    stranger = keys.InstanceKey.generate("rsa")
    neighbour = await _create(portal, id="lab-3", key_type="ed25519")
    neighbour_key = keys.InstanceKey.from_private_bytes(neighbour["private_key_pem"].encode())
    url = "https://lab-2.tunnels.test"

    async def put(token: str | None, body: str = url) -> httpx.Response:
        headers = {"content-type": "text/plain"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return await portal.put("/instances/lab-2/url", content=body, headers=headers)

    assert (await put(None)).status_code == 401
    bad_signature = await put(keys.sign_jwt(stranger, issuer="lab-2", kid=key.kid))
    assert (bad_signature.status_code, bad_signature.json()) == (
        401, {"error": "signature does not verify"},
    )  # fmt: skip
    # Another instance's key, even claiming to be lab-2, does not verify against lab-2's key.
    assert (await put(keys.sign_jwt(neighbour_key, issuer="lab-2"))).status_code == 401
    assert (await put(keys.sign_jwt(key, issuer="lab-3"))).json() == {"error": "wrong issuer"}
    expired = keys.sign_jwt(key, issuer="lab-2", now=int(time.time()) - 3000)
    assert (await put(expired)).json() == {"error": "token expired"}
    for not_ours in (
        "https://other.tunnels.test",
        "https://lab-2x.tunnels.test",
        # The id as first label on a host that is not a router domain (issue 15, point 1):
        "https://lab-2.evil.example",
        "https://lab-2.tunnels.test.evil.example",
        "https://lab-2.sub.tunnels.test",
        "https://lab-2.tunnels.test/not-the-root",
        "ftp://lab-2.tunnels.test",
        "https://lab-2@evil.example/",
        "http://[lab-2",
        "https://lab-2.tunnels.test:99999/",
        "https://lab-2.tunnels.test/a b",
        "https://lab-2.tunnels.test/" + "x" * 4096,
    ):
        refused = await put(keys.sign_jwt(key, issuer="lab-2"), not_ours)
        assert refused.status_code == 422, not_ours
        assert refused.json()["error"] in ("URL too long", _URL_RULE), not_ours
    assert (await put("not.a.jwt")).status_code == 401
    unknown = await portal.put(
        "/instances/lab-9/url", content=url, headers={"authorization": "Bearer x"}
    )
    assert unknown.status_code == 404
    assert (await put(keys.sign_jwt(key, issuer="lab-2"))).status_code == 204
    record = (await portal.get("/instances/lab-2", headers=ADMIN)).json()
    assert record["url"] == url
    published = await portal.get("/instances/lab-2/url")  # what the helper builds its URI from
    assert (published.status_code, published.text) == (200, url + "\n")
    assert (await portal.get("/instances/lab-3/url")).status_code == 404
    await login(portal, "alice")
    assert url in (await portal.get("/")).text


async def test_certificates_and_ca(portal: httpx.AsyncClient) -> None:
    await _create(portal, id="lab-4")
    response = await portal.post(
        "/instances/lab-4/certificate", json={"valid_for_s": 600}, headers=ADMIN
    )
    assert response.status_code == 200
    cert: Any = asyncssh.import_certificate(response.json()["certificate"])
    assert cert.principals == ["lab-4"]
    ca_line = (await portal.get("/ssh-ca.pub")).text.strip()
    assert cert.signing_key.export_public_key().decode().split()[1] == ca_line.split()[1]
    too_long = {"valid_for_s": 365 * 24 * 3600}
    assert (
        await portal.post("/instances/lab-4/certificate", json=too_long, headers=ADMIN)
    ).status_code == 400


async def test_router_events_are_signed(portal: httpx.AsyncClient) -> None:
    await _create(portal, id="lab-5")
    event = {
        "event": "tunnel_up",
        "name": "lab-5",
        "url": "https://lab-5.t",
        "router": "r1",
        "ts": 1.5,
    }
    body = json.dumps(event).encode()
    unsigned = await portal.post("/router-events", content=body)
    assert unsigned.status_code == 401
    guessed = {"x-hostmux-signature": sign_event_body(b"guess", body)}
    forged = await portal.post("/router-events", content=body, headers=guessed)
    assert forged.status_code == 401
    signed = {"x-hostmux-signature": sign_event_body(SECRET, body)}
    assert (await portal.post("/router-events", content=body, headers=signed)).status_code == 204
    tunnel = (await portal.get("/instances/lab-5", headers=ADMIN)).json()["tunnel"]
    assert tunnel == {"state": "up", "router": "r1", "since": 1.5}


async def test_a_name_is_up_while_any_router_of_a_cluster_holds_it(
    portal: httpx.AsyncClient,
) -> None:
    await _create(portal, id="lab-6")

    async def event(kind: str, router_id: str, ts: float) -> dict[str, Any]:
        body = json.dumps(
            {"v": 1, "event": kind, "name": "lab-6", "router": "addr", "ts": ts,
             "data": {"url": "https://lab-6.t", "router_id": router_id, "generation": int(ts)}}
        ).encode()  # fmt: skip
        signed = {"x-hostmux-signature": sign_event_body(SECRET, body)}
        response = await portal.post("/router-events", content=body, headers=signed)
        assert response.status_code == 204
        tunnel: dict[str, Any] = (await portal.get("/instances/lab-6", headers=ADMIN)).json()
        return tunnel["tunnel"]  # type: ignore[no-any-return]

    assert await event("tunnel_up", "a", 1.0) == {"state": "up", "router": "a", "since": 1.0}
    assert await event("tunnel_up", "b", 2.0) == {"state": "up", "router": "a,b", "since": 2.0}
    # Router a lets go: b still holds it, so it stays up.
    assert await event("tunnel_down", "a", 3.0) == {"state": "up", "router": "b", "since": 3.0}
    assert await event("tunnel_down", "b", 4.0) == {"state": "down", "router": "b", "since": 4.0}


async def test_page_escapes_what_users_chose(portal: httpx.AsyncClient) -> None:
    await _create(portal, owner="<script>alert(1)</script>")
    await login(portal, "<script>alert(1)</script>")
    page = (await portal.get("/")).text
    assert "<script>alert" not in page
    assert "&lt;script&gt;" in page


async def login(client: httpx.AsyncClient, user: str) -> None:
    response = await client.post(
        "/login", data={"username": user, "password": "pw-" + user[:5], "next": "/"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


async def test_login_refuses_wrong_passwords_and_foreign_next(portal: httpx.AsyncClient) -> None:
    wrong = await portal.post("/login", data={"username": "alice", "password": "nope"})
    assert wrong.headers["location"].startswith("/login?error=1")
    response = await portal.post(
        "/login", data={"username": "alice", "password": "pw-alice", "next": "//evil.example/"}
    )
    assert response.headers["location"] == "/"


def _pkce() -> tuple[str, str]:
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def _publish(client: httpx.AsyncClient, created: dict[str, Any], url: str) -> None:
    key = keys.InstanceKey.from_private_bytes(created["private_key_pem"].encode())
    response = await client.put(
        f"/instances/{created['id']}/url", content=url,
        headers={"authorization": f"Bearer {keys.sign_jwt(key, issuer=created['id'])}"},
    )  # fmt: skip
    assert response.status_code == 204, response.text


async def test_oauth_code_flow_with_pkce_and_access_check(portal: httpx.AsyncClient) -> None:
    await _publish(portal, await _create(portal, id="lab-6"), "https://lab-6.tunnels.test:8443")
    redirect_uri = "https://lab-6.tunnels.test:8443/_hostmux/callback"
    verifier, challenge = _pkce()
    params = {
        "response_type": "code", "client_id": "lab-6", "redirect_uri": redirect_uri,
        "state": "st-1", "code_challenge": challenge, "code_challenge_method": "S256",
        "scope": "openid",
    }  # fmt: skip
    first = await portal.get("/oauth/authorize", params=params)
    assert first.status_code == 303
    assert first.headers["location"].startswith("/login?next=%2Foauth%2Fauthorize%3F")

    await login(portal, "bob")
    granted = await portal.get("/oauth/authorize", params=params)
    assert granted.status_code == 302
    location = granted.headers["location"]
    assert location.startswith(redirect_uri + "?code=")
    assert "state=st-1" in location
    code = location.split("code=")[1].split("&")[0]

    exchange = {"grant_type": "authorization_code", "code": code, "client_id": "lab-6",
                "redirect_uri": redirect_uri}  # fmt: skip
    wrong = await portal.post("/oauth/token", data={**exchange, "code_verifier": "x" * 50})
    assert wrong.status_code == 400
    token = await portal.post("/oauth/token", data={**exchange, "code_verifier": verifier})
    assert token.status_code == 200, token.text
    access_token = token.json()["access_token"]
    replay = await portal.post("/oauth/token", data={**exchange, "code_verifier": verifier})
    assert replay.status_code == 400  # a code is good for one exchange only

    async def access(token_value: str, instance: str = "lab-6") -> httpx.Response:
        return await portal.get(
            f"/instances/{instance}/access", headers={"authorization": f"Bearer {token_value}"}
        )

    assert (await access(access_token)).json() == {"user": "bob", "allowed": False}
    assert (await access("forged")).status_code == 401
    assert (await access(access_token, "lab-1")).status_code == 401  # token is for lab-6 only
    shared = await portal.post("/instances/lab-6/shares", json={"user": "bob"}, headers=ADMIN)
    assert shared.status_code == 204
    assert (await access(access_token)).json() == {"user": "bob", "allowed": True}


async def test_authorize_refuses_foreign_redirects_and_unknown_clients(
    portal: httpx.AsyncClient,
) -> None:
    created = await _create(portal, id="lab-7")
    await login(portal, "alice")
    _, challenge = _pkce()
    base = {"response_type": "code", "client_id": "lab-7", "state": "s",
            "code_challenge": challenge, "code_challenge_method": "S256"}  # fmt: skip
    registered = "https://lab-7.tunnels.test/_hostmux/callback"
    # No URL published yet: no redirect URI at all, so nothing is sent anywhere.
    early = await portal.get("/oauth/authorize", params={**base, "redirect_uri": registered})
    assert early.status_code == 400
    assert "has not published its URL yet" in early.text
    await _publish(portal, created, "https://lab-7.tunnels.test:443")  # default port: omitted
    for redirect_uri in (
        "https://evil.example/_hostmux/callback",
        "https://lab-8.tunnels.test/_hostmux/callback",
        "https://lab-7.tunnels.test/elsewhere",
        # The id as first label of an attacker's host (issue 15, point 1): refused.
        "https://lab-7.evil.example/_hostmux/callback",
        "https://lab-7.tunnels.test.evil.example/_hostmux/callback",
        # Not byte-for-byte the registered URI: refused too (RFC 9700 2.1).
        "https://lab-7.tunnels.test:443/_hostmux/callback",
        "https://LAB-7.tunnels.test/_hostmux/callback",
        "http://lab-7.tunnels.test/_hostmux/callback",
        "https://lab-7.tunnels.test/_hostmux/callback?x=1",
    ):
        refused = await portal.get(
            "/oauth/authorize", params={**base, "redirect_uri": redirect_uri}
        )
        assert refused.status_code == 400, redirect_uri
        assert "location" not in refused.headers
        assert "must match exactly" in refused.text, redirect_uri
        assert registered in refused.text  # the error names the one that would do
    exact = await portal.get("/oauth/authorize", params={**base, "redirect_uri": registered})
    assert exact.status_code == 302
    assert exact.headers["location"].startswith(registered + "?code=")
    unknown = {**base, "client_id": "nobody", "redirect_uri": "https://nobody.t/_hostmux/callback"}
    assert (await portal.get("/oauth/authorize", params=unknown)).status_code == 400
    no_pkce = {k: v for k, v in base.items() if not k.startswith("code_")}
    no_pkce["redirect_uri"] = registered
    for pkce in ({}, {"code_challenge": challenge, "code_challenge_method": "plain"}):
        refused_pkce = await portal.get("/oauth/authorize", params={**no_pkce, **pkce})
        assert refused_pkce.status_code == 400  # S256 PKCE only: no code, no redirect
        assert "location" not in refused_pkce.headers


async def test_malformed_admin_bodies_are_400s(portal: httpx.AsyncClient) -> None:
    await _create(portal, id="lab-10")
    bodies: list[object] = [[], "x", {"valid_for_s": "soon"}, {"public_key": "not a key"}]
    for body in [*map(json.dumps, bodies), '{"valid_for_s": 1e999}']:
        response = await portal.post("/instances/lab-10/certificate", content=body, headers=ADMIN)
        assert response.status_code == 400, body
        assert "error" in response.json()
    bad_routers: list[object] = [
        [],
        {"servers": "127.0.0.1:2222"},
        {"servers": ["no-port"]},
        {"servers": ["h:70000"]},
        {"servers": [], "host_keys": ["not a key"]},
    ]
    for routers in bad_routers:
        response = await portal.put("/admin/routers", json=routers, headers=ADMIN)
        assert response.status_code == 400, routers
    bad_instances: list[object] = [
        [],
        {"owner": ""},
        {"owner": "a", "id": "Not_A_Label"},
        {"owner": "a", "key_type": "dsa"},
    ]
    for instance in bad_instances:
        response = await portal.post("/instances", json=instance, headers=ADMIN)
        assert response.status_code == 400, instance
    listed = (await portal.get("/instances", headers=ADMIN)).json()
    assert listed == [
        {"id": "lab-10", "owner": "alice", "url": None, "url_updated_at": None, "tunnel": None}
    ]


async def test_router_events_edge_cases(portal: httpx.AsyncClient, tmp_path: Path) -> None:
    def signed(event: object) -> dict[str, Any]:
        body = json.dumps(event).encode()
        return {"content": body, "headers": {"x-hostmux-signature": sign_event_body(SECRET, body)}}

    stranger = {"event": "tunnel_up", "name": "not-ours", "url": None, "router": "r", "ts": 1.0}
    assert (await portal.post("/router-events", **signed(stranger))).status_code == 204
    assert (await portal.post("/router-events", **signed({"event": "x"}))).status_code == 400
    # Version 1: fields under "data"; a kind the portal does not know is taken (2xx), ignored.
    v1 = {"v": 1, "event": "tunnel_up", "name": "not-ours", "router": "r", "ts": 1.0,
          "data": {"url": None}}  # fmt: skip
    assert (await portal.post("/router-events", **signed(v1))).status_code == 204
    unknown = {**v1, "event": "some_future_kind", "data": {"whatever": [1, 2]}}
    assert (await portal.post("/router-events", **signed(unknown))).status_code == 204
    assert (await portal.post("/router-events", **signed({**v1, "data": 3}))).status_code == 400
    huge = {**stranger, "router": "r" * 100_000}
    assert (await portal.post("/router-events", **signed(huge))).status_code == 413
    async with _portal_client(tmp_path / "no-secret", None) as unconfigured:
        refused = await unconfigured.post("/router-events", **signed(stranger))
        assert refused.status_code == 401  # no secret configured: no event is trusted


def test_bad_arguments_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Synchronous on purpose: main() runs its own trio loop (the last case gets as far
    # as binding, to a port that is taken).
    state = str(tmp_path / "state")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for argv in (
            ["serve"],
            ["serve", "--state-dir", state, "--port", "http"],
            ["serve", "--state-dir", state, "--router", "no-port"],
            ["serve", "--state-dir", state, "--router-host-key", "ssh-ed25519 AAAAnope"],
            ["serve", "--state-dir", state, "--public-url", "portal.example"],
            ["serve", "--state-dir", state, "--user", "no-password"],
            ["serve", "--state-dir", state, "--port", port],
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1, err
            assert "error:" in err
            assert "Traceback" not in err


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """Bytes up to and including the first newline, or all of them at EOF."""
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


async def test_portal_process_serves_and_stops_cleanly(tmp_path: Path) -> None:
    host_key = keys.InstanceKey.generate("ed25519").public_openssh()
    env = {k: v for k, v in os.environ.items() if k != "HOSTMUX_PORTAL_ADMIN_TOKEN"}
    state = tmp_path / "state"
    command = [
        sys.executable, "-m", "examples.portal", "serve", "--host", "127.0.0.1",
        "--port", "0", "--state-dir", str(state), "--router", "127.0.0.1:2222",
        "--router-host-key", host_key,
    ]  # fmt: skip
    run = functools.partial(
        trio.run_process, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        check=False,
    )  # fmt: skip
    # The nursery owns the process: if the test fails, run_process kills it on the way out.
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(run)
        assert proc.stdout is not None
        assert proc.stderr is not None
        with trio.fail_after(20):
            line = (await _read_line(proc.stdout)).decode()
        assert line.startswith("portal listening on http://127.0.0.1:"), line
        url = line.removeprefix("portal listening on ").strip()
        assert not url.endswith(":0")
        async with httpx.AsyncClient(base_url=url) as client:
            with trio.fail_after(10):
                assert (await client.get("/healthz")).text == "ok"
                config = (await client.get("/config.json")).json()
        assert config == {
            "router": {"ssh": {"servers": ["127.0.0.1:2222"], "host_keys": [host_key]}}
        }
        assert (state / "admin-token").stat().st_mode & 0o777 == 0o600
        assert (state / "ssh-ca").exists()
        assert (state / "portal.sqlite3").exists()
        proc.terminate()
        with trio.fail_after(10):
            assert await proc.wait() == 0
            errors = await _read_line(proc.stderr)
        assert errors == b""  # no traceback, no log noise


async def test_an_instance_renews_its_certificate_only_while_its_policy_allows(
    portal: httpx.AsyncClient,
) -> None:
    created = await _create(portal, id="lab-20", key_type="ed25519")
    key = keys.InstanceKey.from_private_bytes(created["private_key_pem"].encode())
    mine = {"public_key": created["public_key"]}

    def signed_by(signer: keys.InstanceKey, issuer: str = "lab-20") -> dict[str, str]:
        return {"authorization": f"Bearer {keys.sign_jwt(signer, issuer=issuer)}"}

    async def renew(headers: dict[str, str], body: dict[str, str] = mine) -> httpx.Response:
        return await portal.post("/instances/lab-20/certificate", json=body, headers=headers)

    # Not bound to a job yet: the instance's key is listed, and it may not renew.
    assert (await portal.get("/instances/lab-20/keys")).json() == {"keys": [key.public_jwk()]}
    refused = await renew(signed_by(key))
    assert refused.status_code == 403
    assert "renewal is not allowed" in refused.json()["error"]

    policy = await portal.put(
        "/instances/lab-20/certificate-policy",
        json={"renew": True, "valid_for_s": 30},
        headers=ADMIN,
    )
    assert policy.status_code == 200
    assert (await portal.get("/instances/lab-20", headers=ADMIN)).json()["certificate_policy"] == {
        "renew": True,
        "valid_for_s": 30,
    }
    # Bound to a job: the keys URL lists no key (only certificates open the tunnel).
    assert (await portal.get("/instances/lab-20/keys")).json() == {"keys": []}
    text = await portal.get("/instances/lab-20/keys", headers={"accept": "text/plain"})
    assert (text.status_code, text.text) == (200, "")

    renewed = await renew(signed_by(key))
    assert renewed.status_code == 200, renewed.text
    validity = keys.certificate_validity(renewed.json()["certificate"])
    assert validity.principals == ("lab-20",)
    assert validity.valid_before is not None
    assert 29 <= validity.valid_before - time.time() <= 31  # the policy's lifetime

    # Someone else's key, another issuer, no token, another key's certificate: refused.
    stranger = keys.InstanceKey.generate("ed25519")
    assert (await renew(signed_by(stranger))).status_code == 401
    assert (await renew(signed_by(key, issuer="lab-1"))).status_code == 401
    assert (await renew({})).status_code == 401
    other = await renew(signed_by(key), {"public_key": stranger.public_openssh()})
    assert other.status_code == 403
    assert "its own key" in other.json()["error"]

    # The job is ending: renewal denied from now on.
    denied = {"renew": False, "valid_for_s": 30}
    assert (
        await portal.put("/instances/lab-20/certificate-policy", json=denied, headers=ADMIN)
    ).status_code == 200
    assert (await renew(signed_by(key))).status_code == 403
    bad: object
    for bad in ({}, {"renew": "yes"}, {"renew": True, "valid_for_s": 1}, []):
        response = await portal.put("/instances/lab-20/certificate-policy", json=bad, headers=ADMIN)
        assert response.status_code == 400, bad
    assert (
        await portal.put("/instances/lab-20/certificate-policy", json=denied)
    ).status_code == 401
    assert (
        await portal.put("/instances/nope/certificate-policy", json=denied, headers=ADMIN)
    ).status_code == 404


async def test_verified_router_events_are_kept_for_the_admin(portal: httpx.AsyncClient) -> None:
    event = {
        "v": 1, "event": "tunnel_down", "name": "lab-21", "router": "r1", "ts": 2.0,
        "data": {"url": "https://lab-21.t", "reason": "certificate_expired"},
    }  # fmt: skip
    body = json.dumps(event).encode()
    forged = {"x-hostmux-signature": sign_event_body(b"guess", body)}
    assert (await portal.post("/router-events", content=body, headers=forged)).status_code == 401
    assert (await portal.get("/admin/events", headers=ADMIN)).json() == []
    signed = {"x-hostmux-signature": sign_event_body(SECRET, body)}
    assert (await portal.post("/router-events", content=body, headers=signed)).status_code == 204
    assert (await portal.get("/admin/events", headers=ADMIN)).json() == [event]
    assert (await portal.get("/admin/events")).status_code == 401
