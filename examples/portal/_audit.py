"""The visitor audit the instances' auth helpers send: ``POST /instances/{id}/audit``.

The rules, in the order they are checked:

1. The instance must exist (404).
2. ``Authorization: Bearer <JWT>`` signed by *this* instance's key with ``iss`` =
   its id, as its URL updates are (401 otherwise): another instance's key, or
   no signature, gets nothing stored.
3. The body is at most ``MAX_AUDIT_BYTES`` (413), and the token's
   ``batch_sha256`` claim is the hex SHA-256 of the body (401): a token seen in
   transit cannot carry other records.
4. The body names this instance (403: a batch for another instance), has a
   batch id and well-formed records (400, naming what is wrong).
5. A batch id the portal has stored already stores nothing (200, ``stored`` 0):
   the helper sends a batch again when an answer was lost.

The owner of a shared instance sees its visitors on the portal's page.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import keys

from ._body import body_at_most
from ._db import Visit, Visitor
from ._state import state_of

# A batch is at most 5,000 records of a few hundred bytes (the helper's limits).
MAX_AUDIT_BYTES = 1024 * 1024
MAX_RECORDS = 5_000
# What one field of a record may hold: a user name, an address, a method, a path.
_MAX_USER_CHARS = 256
_MAX_CLIENT_CHARS = 64
_MAX_METHOD_CHARS = 32
_MAX_PATH_CHARS = 2048
_MAX_BATCH_ID_CHARS = 128
# 9999-12-31T23:59:59Z: a later time is no record's (and NaN fails the range check too).
_LATEST_TS = 253_402_300_799


class BadBatch(ValueError):
    """The body is not a usable batch; the message says what is wrong."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def receive_audit(request: Request) -> Response:
    state = state_of(request)
    instance_id = request.path_params["id"]
    instance = await state.db.instance(instance_id)
    if instance is None:
        return _error(404, "no such instance")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(401, "a Bearer JWT signed by the instance key is required")
    try:
        claims = keys.verify_jwt(token.strip(), [instance.jwk], issuer=instance_id)
    except keys.JwtError as exc:
        return _error(401, str(exc))
    body = await body_at_most(request, MAX_AUDIT_BYTES)
    if body is None:
        return _error(413, "audit batch too large")
    if claims.get("batch_sha256") != hashlib.sha256(body).hexdigest():
        return _error(401, "the token's batch_sha256 is not this body's")
    try:
        named, batch, visits = read_batch(body)
    except BadBatch as exc:
        return _error(400, str(exc))
    if named != instance_id:
        return _error(403, f"this batch is for instance {named[:64]!r}, not {instance_id!r}")
    stored = await state.db.add_audit_batch(instance_id, batch, visits)
    state.counts["audit_batches"] = state.counts.get("audit_batches", 0) + 1
    return JSONResponse({"stored": len(visits) if stored else 0})


def read_batch(body: bytes) -> tuple[str, str, list[Visit]]:
    """(instance, batch id, records) of a batch body; BadBatch says what is wrong."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise BadBatch("not JSON") from None
    if not isinstance(value, dict) or value.get("v") != 1:
        raise BadBatch('expected {"v": 1, "instance", "batch", "records"}')
    instance, batch, records = value.get("instance"), value.get("batch"), value.get("records")
    if not isinstance(instance, str):
        raise BadBatch("instance: a string is required")
    if not isinstance(batch, str) or not 0 < len(batch) <= _MAX_BATCH_ID_CHARS:
        raise BadBatch(f"batch: 1-{_MAX_BATCH_ID_CHARS} characters")
    if not isinstance(records, list) or len(records) > MAX_RECORDS:
        raise BadBatch(f"records: a list of at most {MAX_RECORDS}")
    return instance, batch, [_visit(i, record, instance) for i, record in enumerate(records)]


def _visit(index: int, record: object, instance: str) -> Visit:
    if not isinstance(record, dict):
        raise BadBatch(f"records[{index}]: an object is required")
    if record.get("instance", instance) != instance:
        raise BadBatch(f"records[{index}]: names another instance")
    kind = record.get("kind")
    ts = record.get("ts")
    if kind not in ("session", "request"):
        raise BadBatch(f"records[{index}].kind: session or request")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 <= ts <= _LATEST_TS:
        raise BadBatch(f"records[{index}].ts: a number of seconds is required")
    user = _text(record, "user", index, _MAX_USER_CHARS, required=True)
    client = _text(record, "client", index, _MAX_CLIENT_CHARS)
    if kind == "session":
        return Visit(user=user, kind=kind, ts=float(ts), client=client, method=None, path=None,
                     status=None)  # fmt: skip
    status = record.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999:
        raise BadBatch(f"records[{index}].status: an HTTP status is required")
    return Visit(
        user=user, kind=kind, ts=float(ts), client=client, status=status,
        method=_text(record, "method", index, _MAX_METHOD_CHARS, required=True),
        path=_text(record, "path", index, _MAX_PATH_CHARS, required=True),
    )  # fmt: skip


def _text(
    record: dict[str, object], name: str, index: int, limit: int, *, required: bool = False
) -> str:
    value = record.get(name, None if required else "")
    if not isinstance(value, str) or len(value) > limit or (required and not value):
        size = f"1-{limit}" if required else f"at most {limit}"
        raise BadBatch(f"records[{index}].{name}: a string of {size} characters is required")
    return value


def visitors_table(instance_id: str, visitors: list[Visitor]) -> str:
    """The owner's view of who used a shared instance (HTML)."""
    quoted = html.escape(instance_id)
    rows = "".join(
        f"<tr class=visitor><td class=visitor-user>{html.escape(v.user)}</td>"
        f"<td class=visitor-last-seen>{_utc(v.last_seen)}</td>"
        f"<td class=visitor-requests>{v.requests}</td><td>{v.sessions}</td>"
        f"<td>{html.escape(v.last_client)}</td></tr>"
        for v in visitors
    )
    empty = "" if visitors else "<tr><td colspan=5><em>no visits yet</em></td></tr>"
    return (
        f"<h2>Visitors of <code>{quoted}</code></h2>"
        f'<table class=visitors id="visitors-{quoted}"><tr><th>user</th><th>last seen</th>'
        f"<th>requests</th><th>logins</th><th>last address</th></tr>{rows}{empty}</table>"
    )


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
