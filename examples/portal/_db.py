"""The portal's state in SQLite: users, instances, their URLs and tunnel state, the
helpers' grants (access tokens, stored hashed), settings.

One connection, used from worker threads one call at a time (a trio lock), so
the event loop never blocks on disk and SQLite never sees two writers. WAL
mode keeps readers of the file (an operator's ``sqlite3`` shell) unblocked.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(name),
    public_key TEXT NOT NULL,
    jwk TEXT NOT NULL,
    url TEXT,
    url_updated_at REAL,
    tunnel_state TEXT,
    tunnel_router TEXT,
    tunnel_since REAL,
    created REAL NOT NULL
);
-- Which routers hold an instance's tunnel now (a cluster: one row per router).
CREATE TABLE IF NOT EXISTS tunnel_holders (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    router TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (instance, router)
);
-- Idle or active, as the routers' signed idle/active events last said.
CREATE TABLE IF NOT EXISTS activity (
    instance TEXT PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    last_activity REAL,
    router TEXT NOT NULL
);
-- Usage events summed per instance and router (each router counts what it relayed).
CREATE TABLE IF NOT EXISTS usage (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    router TEXT NOT NULL,
    intervals INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    connection_s REAL NOT NULL DEFAULT 0,
    websocket_s REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (instance, router)
);
CREATE TABLE IF NOT EXISTS shares (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    user TEXT NOT NULL,
    PRIMARY KEY (instance, user)
);
CREATE TABLE IF NOT EXISTS grants (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    instance TEXT NOT NULL,
    expires REAL NOT NULL
);
-- The visitor audit the instances' auth helpers send (POST /instances/{id}/audit).
CREATE TABLE IF NOT EXISTS audit_batches (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    batch TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (instance, batch)
);
CREATE TABLE IF NOT EXISTS visits (
    instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts REAL NOT NULL,
    client TEXT NOT NULL,
    method TEXT,
    path TEXT,
    status INTEGER
);
CREATE INDEX IF NOT EXISTS visits_by_instance ON visits (instance, user);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


_USAGE_FIELDS = ("requests", "bytes_in", "bytes_out", "connection_s", "websocket_s")


@dataclass(frozen=True)
class Visit:
    """One audit record: a session started (``kind`` "session") or a request made."""

    user: str
    kind: str
    ts: float
    client: str
    method: str | None
    path: str | None
    status: int | None


@dataclass(frozen=True)
class Visitor:
    """One user of an instance, from its audit records."""

    user: str
    last_seen: float
    requests: int
    sessions: int
    last_client: str


@dataclass(frozen=True)
class Instance:
    id: str
    owner: str
    public_key: str
    jwk: dict[str, str]
    url: str | None
    url_updated_at: float | None
    tunnel_state: str | None
    tunnel_router: str | None
    tunnel_since: float | None

    def public_view(self) -> dict[str, object]:
        tunnel = None
        if self.tunnel_state is not None:
            tunnel = {
                "state": self.tunnel_state,
                "router": self.tunnel_router,
                "since": self.tunnel_since,
            }
        return {
            "id": self.id,
            "owner": self.owner,
            "url": self.url,
            "url_updated_at": self.url_updated_at,
            "tunnel": tunnel,
        }


class Database:
    """Async access to the portal's SQLite file."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self._lock = trio.Lock()

    def __repr__(self) -> str:
        return "<Database>"

    def close(self) -> None:
        self._conn.close()

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(work, self._conn)

    async def ensure_user(self, name: str, password_hash: str | None = None) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO users (name, password_hash, created) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET password_hash = "
                "COALESCE(excluded.password_hash, users.password_hash)",
                (name, password_hash, time.time()),
            )

        await self._run(work)

    async def password_hash(self, name: str) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
            return None if row is None else row["password_hash"]

        return await self._run(work)

    async def add_instance(
        self, instance_id: str, owner: str, public_key: str, jwk: dict[str, str]
    ) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            try:
                conn.execute(
                    "INSERT INTO instances (id, owner, public_key, jwk, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (instance_id, owner, public_key, json.dumps(jwk), time.time()),
                )
            except sqlite3.IntegrityError:
                return False
            return True

        await self.ensure_user(owner)
        return await self._run(work)

    async def instance(self, instance_id: str) -> Instance | None:
        def work(conn: sqlite3.Connection) -> Instance | None:
            row = conn.execute("SELECT * FROM instances WHERE id = ?", (instance_id,)).fetchone()
            return None if row is None else _instance(row)

        return await self._run(work)

    async def instances(self) -> list[Instance]:
        def work(conn: sqlite3.Connection) -> list[Instance]:
            rows = conn.execute("SELECT * FROM instances ORDER BY created").fetchall()
            return [_instance(row) for row in rows]

        return await self._run(work)

    async def instances_for(self, user: str) -> list[Instance]:
        """Instances the user owns or that are shared with them."""

        def work(conn: sqlite3.Connection) -> list[Instance]:
            rows = conn.execute(
                "SELECT * FROM instances WHERE owner = ? OR id IN "
                "(SELECT instance FROM shares WHERE user = ?) ORDER BY created",
                (user, user),
            ).fetchall()
            return [_instance(row) for row in rows]

        return await self._run(work)

    async def set_url(self, instance_id: str, url: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE instances SET url = ?, url_updated_at = ? WHERE id = ?",
                (url, time.time(), instance_id),
            )

        await self._run(work)

    async def set_tunnel(self, instance_id: str, state: str, router: str, since: float) -> None:
        """Record one router's event: the tunnel is up while any router holds it.

        ``tunnel_router`` lists the routers holding it (comma-separated), or the
        one that let it go last.
        """

        def work(conn: sqlite3.Connection) -> None:
            if state == "up":
                conn.execute(
                    "INSERT OR REPLACE INTO tunnel_holders (instance, router, since) "
                    "VALUES (?, ?, ?)",
                    (instance_id, router, since),
                )
            else:
                conn.execute(
                    "DELETE FROM tunnel_holders WHERE instance = ? AND router = ?",
                    (instance_id, router),
                )
            holders = [
                row[0]
                for row in conn.execute(
                    "SELECT router FROM tunnel_holders WHERE instance = ? ORDER BY router",
                    (instance_id,),
                )
            ]
            conn.execute(
                "UPDATE instances SET tunnel_state = ?, tunnel_router = ?, tunnel_since = ? "
                "WHERE id = ?",
                ("up" if holders else "down", ",".join(holders) or router, since, instance_id),
            )

        await self._run(work)

    async def set_activity(
        self, instance_id: str, state: str, since: float, last: float | None, router: str
    ) -> None:
        """An idle or active event: the instance's state now (the latest event wins)."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO activity (instance, state, since, last_activity, router) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(instance) DO UPDATE SET "
                "state = excluded.state, since = excluded.since, "
                "last_activity = excluded.last_activity, router = excluded.router "
                "WHERE excluded.since >= activity.since",
                (instance_id, state, since, last, router),
            )

        await self._run(work)

    async def add_usage(self, instance_id: str, router: str, counts: dict[str, float]) -> None:
        """A usage event: one router's interval, added to what it reported before."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO usage (instance, router, intervals, requests, bytes_in, bytes_out, "
                "connection_s, websocket_s) VALUES (?, ?, 1, ?, ?, ?, ?, ?) "
                "ON CONFLICT(instance, router) DO UPDATE SET intervals = intervals + 1, "
                "requests = requests + excluded.requests, "
                "bytes_in = bytes_in + excluded.bytes_in, "
                "bytes_out = bytes_out + excluded.bytes_out, "
                "connection_s = connection_s + excluded.connection_s, "
                "websocket_s = websocket_s + excluded.websocket_s",
                (
                    instance_id, router, int(counts["requests"]), int(counts["bytes_in"]),
                    int(counts["bytes_out"]), counts["connection_s"], counts["websocket_s"],
                ),
            )  # fmt: skip

        await self._run(work)

    async def activity(self) -> dict[str, dict[str, Any]]:
        """Per instance: its idle state and its usage summed over routers (and per router)."""

        def work(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            for row in conn.execute("SELECT * FROM activity"):
                found.setdefault(row["instance"], {})["activity"] = {
                    "state": row["state"], "since": row["since"],
                    "last_activity": row["last_activity"], "router": row["router"],
                }  # fmt: skip
            for row in conn.execute("SELECT * FROM usage ORDER BY instance, router"):
                entry = found.setdefault(row["instance"], {})
                empty = {**dict.fromkeys(_USAGE_FIELDS, 0), "routers": {}}
                usage = entry.setdefault("usage", empty)
                counts = {k: row[k] for k in ("intervals", *_USAGE_FIELDS)}
                usage["routers"][row["router"]] = counts
                for key in _USAGE_FIELDS:
                    usage[key] += row[key]
            return found

        return await self._run(work)

    async def share(self, instance_id: str, user: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO shares (instance, user) VALUES (?, ?)", (instance_id, user)
            )

        await self._run(work)

    async def unshare(self, instance_id: str, user: str) -> bool:
        """Remove a share; False if there was none."""

        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM shares WHERE instance = ? AND user = ?", (instance_id, user)
            )
            return cursor.rowcount > 0

        return await self._run(work)

    async def add_grant(self, token_hash: str, user: str, instance: str, expires: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM grants WHERE expires < ?", (time.time(),))
            conn.execute(
                "INSERT OR REPLACE INTO grants (token_hash, user, instance, expires) "
                "VALUES (?, ?, ?, ?)",
                (token_hash, user, instance, expires),
            )

        await self._run(work)

    async def grant(self, token_hash: str) -> tuple[str, str] | None:
        """(user, instance) of an unexpired grant."""

        def work(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row = conn.execute(
                "SELECT user, instance FROM grants WHERE token_hash = ? AND expires > ?",
                (token_hash, time.time()),
            ).fetchone()
            return None if row is None else (row["user"], row["instance"])

        return await self._run(work)

    async def revoke_grants(self, user: str, instance: str | None = None) -> None:
        """Forget the user's grants (on one instance, or all): their re-checks now fail."""

        def work(conn: sqlite3.Connection) -> None:
            if instance is None:
                conn.execute("DELETE FROM grants WHERE user = ?", (user,))
            else:
                conn.execute("DELETE FROM grants WHERE user = ? AND instance = ?", (user, instance))

        await self._run(work)

    async def shared_with(self, instance_id: str) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT user FROM shares WHERE instance = ? ORDER BY user", (instance_id,)
            ).fetchall()
            return [row["user"] for row in rows]

        return await self._run(work)

    async def add_audit_batch(self, instance_id: str, batch: str, visits: list[Visit]) -> bool:
        """Store a batch's records once; False (nothing stored) if the batch came before."""

        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN")  # the batch and its records, or neither (autocommit otherwise)
            try:
                conn.execute(
                    "INSERT INTO audit_batches (instance, batch, received) VALUES (?, ?, ?)",
                    (instance_id, batch, time.time()),
                )
                conn.executemany(
                    "INSERT INTO visits (instance, user, kind, ts, client, method, path, "
                    "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(instance_id, v.user, v.kind, v.ts, v.client, v.method, v.path, v.status)
                     for v in visits],
                )  # fmt: skip
            except sqlite3.IntegrityError:  # the batch is there already
                conn.execute("ROLLBACK")
                return False
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return True

        return await self._run(work)

    async def visitors(self, instance_id: str) -> list[Visitor]:
        """Who used the instance: each user's last record, requests and sessions."""

        def work(conn: sqlite3.Connection) -> list[Visitor]:
            rows = conn.execute(
                "SELECT user, MAX(ts) AS last_seen, SUM(kind = 'request') AS requests, "
                "SUM(kind = 'session') AS sessions, "
                "(SELECT client FROM visits AS v WHERE v.instance = visits.instance "
                " AND v.user = visits.user ORDER BY ts DESC LIMIT 1) AS last_client "
                "FROM visits WHERE instance = ? GROUP BY user ORDER BY last_seen DESC",
                (instance_id,),
            ).fetchall()
            return [
                Visitor(row["user"], row["last_seen"], row["requests"], row["sessions"],
                        row["last_client"])
                for row in rows
            ]  # fmt: skip

        return await self._run(work)

    async def setting(self, key: str, default: Any) -> Any:
        def work(conn: sqlite3.Connection) -> Any:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return default if row is None else json.loads(row["value"])

        return await self._run(work)

    async def set_setting(self, key: str, value: Any) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

        await self._run(work)


def _instance(row: sqlite3.Row) -> Instance:
    return Instance(
        id=row["id"],
        owner=row["owner"],
        public_key=row["public_key"],
        jwk=json.loads(row["jwk"]),
        url=row["url"],
        url_updated_at=row["url_updated_at"],
        tunnel_state=row["tunnel_state"],
        tunnel_router=row["tunnel_router"],
        tunnel_since=row["tunnel_since"],
    )
