"""The visitor audit's pure parts: the helper's records and queue, the portal's batch rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authhelper._audit import (
    MAX_PATH_CHARS,
    REQUEST,
    SESSION,
    VisitorAudit,
    audit_record,
    batch_body,
    client_address,
    forwarded_for,
)
from authhelper._config import load_config
from examples.portal._audit import BadBatch, read_batch
from hostmux.relay import RequestRecord


def _audit(queue_max: int = 10) -> VisitorAudit:
    return VisitorAudit("inst", audit_url="http://portal.invalid/instances/inst/audit", key=None,
                        issuer="inst", kid=None, queue_max=queue_max, batch_max=5,
                        flush_interval_s=1.0)  # fmt: skip


def _finished(rid: str, status: int = 200, target: str = "/a?b=c") -> RequestRecord:
    return RequestRecord(request_id=rid, peer="127.0.0.1:5", host="", name="inst", method="GET",
                         target=target, status=status, bytes_in=0, bytes_out=0,
                         duration_ms=1.0)  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ([(b"x-forwarded-for", b"203.0.113.9")], "203.0.113.9"),
        # What a browser wrote is on the left; the router's entry is the last one.
        ([(b"x-forwarded-for", b"10.0.0.1, 198.51.100.2")], "198.51.100.2"),
        ([(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2001:db8::1")], "2001:db8::1"),
        ([(b"x-forwarded-for", b"1.1.1.1, not-an-address")], ""),
        ([(b"host", b"x")], ""),
    ],
)
def test_the_client_is_the_routers_entry(headers: list[tuple[bytes, bytes]], client: str) -> None:
    assert client_address(forwarded_for(headers)) == client


def test_a_request_record_keeps_no_query_and_a_bounded_path() -> None:
    record = audit_record((REQUEST, 12.3456, "alice", b"192.0.2.1", "POST", "/p?token=s", 201), "i")
    assert record == {
        **{"kind": "request", "ts": 12.346, "user": "alice", "instance": "i"},
        **{"client": "192.0.2.1", "method": "POST", "path": "/p", "status": 201},
    }
    long = audit_record((REQUEST, 1.0, "a", b"", "GET", "/" + "x" * 5000, 200), "i")
    assert len(str(long["path"])) == MAX_PATH_CHARS
    session = audit_record((SESSION, 1.0, "bob", b"", "", "", 0), "i")
    assert session == {"kind": "session", "ts": 1.0, "user": "bob", "instance": "i", "client": ""}


def test_only_requests_a_session_made_are_queued() -> None:
    audit = _audit()
    audit.visit("r1", "alice", [])
    audit.finished(_finished("r0"))  # a login page: no session, not recorded
    audit.finished(_finished("r1", 404))
    audit.finished(_finished("r1"))  # (a request id finishes once)
    assert audit.queued == 1


def test_overflow_is_counted_and_never_queued() -> None:
    audit = _audit(queue_max=3)
    audit.session_started("alice", [])
    for i in range(5):
        audit.visit(f"r{i}", "alice", [])
        audit.finished(_finished(f"r{i}"))
    assert audit.queued == 3
    assert audit.counts["overflow"] == 3


def test_a_batch_body_is_what_the_portal_reads() -> None:
    records = [audit_record((REQUEST, 5.0, "alice", b"", "GET", "/x", 200), "inst"),
               audit_record((SESSION, 4.0, "bob", b"", "", "", 0), "inst")]  # fmt: skip
    instance, batch, visits = read_batch(batch_body("inst", "b1", records))
    assert (instance, batch) == ("inst", "b1")
    assert [(v.user, v.kind, v.path, v.status) for v in visits] == [
        ("alice", "request", "/x", 200), ("bob", "session", None, None)]  # fmt: skip


def _batch(*records: object) -> dict[str, object]:
    return {"v": 1, "instance": "i", "batch": "b", "records": list(records)}


_REQUEST = {"kind": "request", "ts": 1, "user": "a", "method": "GET", "path": "/", "status": 200}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not JSON"),
        (b"[]", "expected"),
        ({"v": 2, "instance": "i", "batch": "b", "records": []}, "expected"),
        ({"v": 1, "instance": "i", "batch": "", "records": []}, "batch"),
        ({"v": 1, "instance": "i", "batch": "b", "records": {}}, "records"),
        (_batch(1), "records.0.: an object"),
        (_batch({**_REQUEST, "instance": "j"}), "another instance"),
        (_batch({**_REQUEST, "ts": float("nan")}), "ts"),
        (_batch({**_REQUEST, "status": True}), "status"),
        (_batch({**_REQUEST, "user": ""}), "user"),
        (_batch({**_REQUEST, "path": 7}), "path"),
        (_batch({**_REQUEST, "kind": "login"}), "kind"),
    ],
)
def test_the_portal_names_what_is_wrong_with_a_batch(body: object, message: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(BadBatch, match=message):
        read_batch(raw)


def test_a_good_request_record_passes() -> None:
    assert read_batch(json.dumps(_batch(_REQUEST)).encode())[2][0].status == 200


def test_a_dit4c_pod_gives_the_helper_its_instance_key() -> None:
    env = {
        "DIT4C_INSTANCE_ID": "i-abc",
        "DIT4C_INSTANCE_PRIVATE_KEY_PKCS1": "/dit4c/key.pem",
        "DIT4C_INSTANCE_JWT_ISS": "i-abc-iss",
        "DIT4C_INSTANCE_JWT_KID": "kid-1",
        "DIT4C_PORTAL_URL": "https://portal.example.org",
        "HOSTMUX_COOKIE_KEYS_FILE": "/tmp/none",
    }
    config = load_config([], env)
    assert config.instance_key_file == Path("/dit4c/key.pem")
    assert (config.jwt_iss, config.jwt_kid) == ("i-abc-iss", "kid-1")
    assert config.audit_queue_max == 10_000
    assert load_config(["--jwt-iss", "flag"], env).jwt_iss == "flag"  # a flag wins
