"""Revoking sessions: the store kept in state_dir, and the portal's signed revocations."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import keys
from authhelper._access import AccessChecks
from authhelper._revocations import (
    FILE_NAME,
    Revocations,
    load_revocations,
    write_revocations,
)
from authhelper._revoke import PORTAL_ISSUER, RevocationRefused, read_revocation
from authhelper._session import CookieSealer, new_cookie_key

LIFETIME_S = 3600
PORTAL_KEY = keys.InstanceKey.generate("ed25519")
JWKS = [PORTAL_KEY.public_jwk()]


def _sealer() -> CookieSealer:
    return CookieSealer([new_cookie_key()], "inst-a", session_lifetime_s=LIFETIME_S)


def test_a_revoked_session_stays_revoked_across_a_restart(tmp_path: Path) -> None:
    _, kept = _sealer().seal_session("alice", now=1_000)
    _, gone = _sealer().seal_session("alice", now=1_000)
    store = Revocations(LIFETIME_S)
    store.revoke_session(gone)
    write_revocations(tmp_path, store.to_json())
    reloaded = load_revocations(tmp_path, LIFETIME_S)
    assert reloaded.is_revoked(gone)
    assert not reloaded.is_revoked(kept)
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary left behind


def test_a_user_revocation_covers_sessions_issued_until_then() -> None:
    store = Revocations(LIFETIME_S)
    store.revoke_user("alice", 2_000)
    assert store.is_revoked(_sealer().seal_session("alice", now=1_999)[1])
    assert store.is_revoked(_sealer().seal_session("alice", now=2_000)[1])
    assert not store.is_revoked(_sealer().seal_session("alice", now=2_001)[1])  # a new login
    assert not store.is_revoked(_sealer().seal_session("bob", now=1_000)[1])


def test_pruning_forgets_only_what_has_expired_anyway() -> None:
    store = Revocations(LIFETIME_S)
    _, session = _sealer().seal_session("alice", now=1_000)
    store.revoke_session(session)
    store.revoke_user("bob", 1_000)
    assert store.use_jti("j1", exp=1_100)
    store.prune(1_000 + LIFETIME_S)
    assert store.is_revoked(session)
    assert store.users == {"bob": 1_000}
    assert store.jtis == {}
    store.prune(1_001 + LIFETIME_S)
    assert (store.sids, store.users) == ({}, {})


@pytest.mark.parametrize("text", ["", "[]", '{"version": 2}', '{"version":1,"sids":{"a":"x"}}'])
def test_a_damaged_file_is_an_error_not_an_empty_store(tmp_path: Path, text: str) -> None:
    (tmp_path / FILE_NAME).write_text(text)
    with pytest.raises(ValueError, match=FILE_NAME):
        load_revocations(tmp_path, LIFETIME_S)


def _token(key: keys.InstanceKey = PORTAL_KEY, **claims: object) -> str:
    body: dict[str, object] = {"aud": "inst-a", "sub": "alice", "jti": "j-1", **claims}
    return keys.sign_jwt(key, issuer=PORTAL_ISSUER, lifetime_s=120, claims=body)


def test_a_signed_revocation_for_this_instance_is_read() -> None:
    found = read_revocation(_token(), JWKS, "inst-a")
    assert (found.user, found.jti) == ("alice", "j-1")
    assert found.exp - found.at == 120


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _token(aud="inst-b"), "another instance"),
        (lambda: _token(keys.InstanceKey.generate("ed25519")), "unknown kid"),
        (lambda: _token(sub=""), "no user"),
        (lambda: _token(jti=7), "no user"),
        (lambda: "not.a.jwt", "JWT"),
        (lambda: keys.sign_jwt(PORTAL_KEY, issuer="someone", claims={"aud": "inst-a"}), "issuer"),
        (
            lambda: keys.sign_jwt(
                PORTAL_KEY,
                issuer=PORTAL_ISSUER,
                lifetime_s=120,
                claims={"aud": "inst-a", "sub": "a", "jti": "j"},
                now=int(time.time()) - 600,
            ),
            "expired",
        ),
        (lambda: keys.sign_jwt(PORTAL_KEY, issuer=PORTAL_ISSUER, lifetime_s=3000), "lifetime"),
    ],
)
def test_revocations_not_for_us_are_refused(make: Callable[[], str], reason: str) -> None:
    token = make()  # signed now, not at import: the suite may run longer than a lifetime
    with pytest.raises(RevocationRefused, match=reason):
        read_revocation(token, JWKS, "inst-a")


def test_a_replayed_revocation_is_recognised() -> None:
    store = Revocations(LIFETIME_S)
    found = read_revocation(_token(), JWKS, "inst-a")
    assert store.use_jti(found.jti, found.exp)
    assert not store.use_jti(found.jti, found.exp)
    assert json.loads(store.to_json())["jtis"] == {"j-1": found.exp}


def test_access_checks_fall_due_on_schedule() -> None:
    now = [100.0]
    checks = AccessChecks(300, clock=lambda: now[0])
    assert checks.is_due("s")  # never checked (a restart): due at once
    checks.record("s")
    now[0] += 299
    assert not checks.is_due("s")
    now[0] += 1
    assert checks.is_due("s")
    checks.record("s", retry_in_s=10)  # the portal was unreachable: again in 10 s
    now[0] += 9
    assert not checks.is_due("s")
    now[0] += 1
    assert checks.is_due("s")
