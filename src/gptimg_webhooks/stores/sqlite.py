"""The zero-config default: a SQLite file (stdlib ``sqlite3``) shared by every process on a host.

Correct under ``gunicorn -w 4`` and ``uvicorn --workers 4``: a claim is one
``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING`` statement, which SQLite runs
under its single write lock, so exactly one process wins a delivery. The database runs
in WAL mode with ``synchronous=NORMAL``: a process crash loses nothing; a power cut may
lose the last few commits, never corrupt the file. The schema is created on first use.

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's
convention), with an optional ``?busy_timeout=3.0`` in seconds.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import parse_qs, unquote, urlsplit

from .._core.errors import ConfigurationError, StoreUnavailable
from .._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store
from .memory import new_token

__all__ = ["SQLiteStore", "enable_wal"]


def enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch ``conn``'s database file to WAL mode, waiting up to ``timeout`` seconds.

    Several threads or processes opening a new file together can get "database is
    locked" at once here: SQLite does not run its busy handler for this switch.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


_TABLE = "gptimg_webhook_deliveries"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event TEXT,
    generation_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    token TEXT,
    lease_until REAL,
    available_at REAL,
    body BLOB,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {_TABLE}_state ON {_TABLE} (state, updated_at);
CREATE TABLE IF NOT EXISTS gptimg_webhook_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_CLAIM = f"""
INSERT INTO {_TABLE} (key, state, delivery_id, event, generation_id, attempts, token,
                      lease_until, body, created_at, updated_at)
VALUES (:key, 'processing', :delivery_id, :event, :generation_id, 1, :token,
        :lease_until, :body, :now, :now)
ON CONFLICT (key) DO UPDATE SET
    state = 'processing', attempts = attempts + 1, token = excluded.token,
    lease_until = excluded.lease_until, updated_at = excluded.updated_at
WHERE state = 'failed' OR (state = 'processing' AND lease_until <= :now)
RETURNING attempts
"""
_ENQUEUE = f"""
INSERT INTO {_TABLE} (key, state, delivery_id, event, generation_id, attempts,
                      body, created_at, updated_at)
VALUES (:key, 'pending', :delivery_id, :event, :generation_id, 0, :body, :now, :now)
ON CONFLICT (key) DO UPDATE SET
    state = 'pending', token = NULL, lease_until = NULL, updated_at = excluded.updated_at
WHERE state = 'failed'
RETURNING attempts
"""
_COLUMNS = Record.COLUMNS
_FINISHED = "('done', 'failed', 'dead')"


class SQLiteStore(Store):
    """A ledger in one SQLite file; one connection per thread and per process."""

    schemes = ("sqlite",)

    def __init__(self, path: str, *, busy_timeout: float = 3.0) -> None:
        if not path:
            raise ConfigurationError("SQLite store needs a file path: sqlite:///file.db")
        self.path = path
        # Below the provider's 5 s timeout, so a jammed lock turns into a 503 it retries.
        self.busy_timeout = busy_timeout
        self._local = threading.local()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        parts = urlsplit(url)
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        query = parse_qs(parts.query)
        timeout = float(query.get("busy_timeout", ["3.0"])[0])
        return cls(path, busy_timeout=timeout)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        # New thread, or a forked child: never share a connection across a fork.
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            enable_wal(conn, self.busy_timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        local.conn, local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._conn()
            if write:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                yield conn
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite ledger {self.path!r}: {exc}") from exc

    def claim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        params = {
            "key": entry.key,
            "delivery_id": entry.delivery_id,
            "event": entry.event,
            "generation_id": entry.generation_id,
            "body": entry.body,
            "now": now,
        }
        with self._db() as conn:
            if defer:
                if conn.execute(_ENQUEUE, params).fetchone() is not None:
                    return Claim(ClaimStatus.PENDING)
            else:
                token = new_token()
                params.update(token=token, lease_until=now + lease)
                row = conn.execute(_CLAIM, params).fetchone()
                if row is not None:
                    return Claim(ClaimStatus.CLAIMED, row[0], token)
            found = conn.execute(
                f"SELECT state FROM {_TABLE} WHERE key = ?", (entry.key,)
            ).fetchone()
        state = found[0] if found else None
        if state == "done":
            return Claim(ClaimStatus.DONE)
        if state == "dead":
            return Claim(ClaimStatus.DEAD)
        return Claim(
            ClaimStatus.PENDING if defer or state == "pending" else ClaimStatus.IN_PROGRESS
        )

    def complete(self, key: str, token: str, *, now: float) -> bool:
        with self._db(write=True) as conn:
            done = conn.execute(
                f"UPDATE {_TABLE} SET state = 'done', body = NULL, error = NULL, token = NULL, "
                "lease_until = NULL, updated_at = ? "
                "WHERE key = ? AND token = ? AND state = 'processing'",
                (now, key, token),
            ).rowcount
            if done == 1:  # like the other stores: only a real success ends the streak
                conn.execute(
                    "UPDATE gptimg_webhook_counters SET value = 0 "
                    "WHERE name = 'failures' AND value <> 0"
                )
        return done == 1

    def fail(
        self,
        key: str,
        token: str,
        error: str,
        *,
        now: float,
        dead: bool = False,
        retry_at: float | None = None,
    ) -> bool:
        state = "dead" if dead else "pending" if retry_at is not None else "failed"
        with self._db() as conn:
            cursor = conn.execute(
                f"UPDATE {_TABLE} SET state = ?, error = ?, token = NULL, lease_until = NULL, "
                "available_at = ?, updated_at = ? "
                "WHERE key = ? AND token = ? AND state = 'processing'",
                (state, error, retry_at, now, key, token),
            )
            return cursor.rowcount == 1

    def get(self, key: str) -> Record | None:
        with self._db() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM {_TABLE} WHERE key = ?", (key,)).fetchone()
        return Record.from_row(row) if row else None

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        where, args = ("WHERE state = ?", (state.value,)) if state else ("", ())
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {_TABLE} {where} ORDER BY updated_at DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [Record.from_row(r) for r in rows]

    def replay(self, key: str, *, now: float) -> bool:
        with self._db() as conn:
            return (
                conn.execute(
                    f"UPDATE {_TABLE} SET state = 'pending', available_at = NULL, updated_at = ? "
                    "WHERE key = ? AND state IN ('failed', 'dead')",
                    (now, key),
                ).rowcount
                == 1
            )

    def prune(self, before: float) -> int:
        with self._db() as conn:
            return conn.execute(
                f"DELETE FROM {_TABLE} WHERE state IN {_FINISHED} AND updated_at < ?", (before,)
            ).rowcount

    def record_failure(self, limit: int) -> bool:
        with self._db(write=True) as conn:
            (count,) = conn.execute(
                "INSERT INTO gptimg_webhook_counters (name, value) VALUES ('failures', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
            ).fetchone()
            if count > limit:
                conn.execute("UPDATE gptimg_webhook_counters SET value = 0 WHERE name = 'failures'")
                return True
        return False

    def lease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        leased: list[tuple[Record, Claim]] = []
        with self._db(write=True) as conn:
            rows = conn.execute(
                f"SELECT key FROM {_TABLE} "
                "WHERE (state = 'pending' AND (available_at IS NULL OR available_at <= ?)) "
                "OR (state = 'processing' AND lease_until <= ?) ORDER BY updated_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            for (key,) in rows:
                token = new_token()
                row = conn.execute(
                    f"UPDATE {_TABLE} SET state = 'processing', attempts = attempts + 1, "
                    "token = ?, lease_until = ?, available_at = NULL, updated_at = ? WHERE key = ? "
                    f"RETURNING {_COLUMNS}",
                    (token, now + lease, now, key),
                ).fetchone()
                rec = Record.from_row(row)
                leased.append((rec, Claim(ClaimStatus.CLAIMED, rec.attempts, token)))
        return leased

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
