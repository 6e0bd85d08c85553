"""A PostgreSQL ledger (psycopg 3), shared by every process on every host, with transactions.

URL: ``postgresql://user:password@host:5432/dbname?table=gptimg_webhook_deliveries``
(``postgres://`` too). Options of this store, removed before the URL reaches libpq:

- ``table``: the records table, optionally schema-qualified (``ops.webhooks``); the
  failure streak lives in ``<table>_counters``. Default ``gptimg_webhook_deliveries``.
- ``pool_max``: connections per process and per event loop (default 10).
- ``pool_timeout``: seconds to wait for a pooled connection before answering 503
  (default 1.5, well inside the provider's 5 s).
- ``create_schema``: ``false`` to never run DDL (create it with :meth:`create_schema`
  or ``gptimg-webhooks`` tooling under an owner role instead).

Every other query option (``connect_timeout``, ``sslmode``, ``application_name``...)
is libpq's; ``connect_timeout`` defaults to 2 s here.

Schema: created on first use by each process (``CREATE ... IF NOT EXISTS`` under a
transaction-scoped advisory lock, so processes starting together do not race), or
explicitly with :meth:`PostgresStore.create_schema`. Layout::

    <table>          key text PRIMARY KEY, state, delivery_id, event, generation_id,
                     attempts, token, lease_until, available_at, body bytea, error,
                     created_at, updated_at  (times are epoch seconds, double precision)
    <table>_counters name text PRIMARY KEY, value bigint  (row 'failures')

A claim is one ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE ... RETURNING``;
``complete`` / ``fail`` act only while the caller's fencing token holds the lease; workers
lease with ``FOR UPDATE SKIP LOCKED`` so two never take the same record. Retention:
``prune`` (run by the receiver about hourly with its ``retention``, 30 days by default)
deletes finished records older than the cutoff, in batches.

Exactly-once effects: the store is transactional. :meth:`transaction` (and
:meth:`atransaction`) yields a psycopg connection inside an open transaction, which
handlers receive as ``delivery.transaction``; while it is open, :meth:`complete` marks
the record done on that same connection, so the handler's writes and the done mark
commit together, and a handler that raises rolls both back.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import os
import re
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from gptimg_webhooks._core.errors import ConfigurationError, StoreUnavailable
from gptimg_webhooks._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store

from .memory import new_token

__all__ = ["PostgresStore"]

DEFAULT_TABLE = "gptimg_webhook_deliveries"
_NAME = re.compile(r"(?:[a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,50}")
_OWN_OPTIONS = ("table", "pool_max", "pool_timeout", "create_schema")
_PRUNE_BATCH = 5000
_COLUMNS = Record.COLUMNS


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"expected a boolean, got {value!r}")


class _SQL:
    """The statements, for one table name (quoted as identifiers, never interpolated)."""

    def __init__(self, table: str) -> None:
        schema, _, bare = table.rpartition(".")
        names = {
            "t": sql.Identifier(*filter(None, (schema, bare))),
            "c": sql.Identifier(*filter(None, (schema, f"{bare}_counters"))),
            "state_index": sql.Identifier(f"{bare}_state"),
            "columns": sql.SQL(_COLUMNS),
            "batch": sql.Literal(_PRUNE_BATCH),
        }

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(**names)

        self.lock_id = int.from_bytes(
            hashlib.sha256(f"gptimg_webhooks:{table}".encode()).digest()[:8], "big", signed=True
        )
        self.ddl = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))]
        if not schema:
            self.ddl = []
        self.ddl += [
            q(
                """CREATE TABLE IF NOT EXISTS {t} (
                key text PRIMARY KEY,
                state text NOT NULL,
                delivery_id text NOT NULL,
                event text,
                generation_id text,
                attempts integer NOT NULL DEFAULT 0,
                token text,
                lease_until double precision,
                available_at double precision,
                body bytea,
                error text,
                created_at double precision NOT NULL,
                updated_at double precision NOT NULL)"""
            ),
            q("CREATE INDEX IF NOT EXISTS {state_index} ON {t} (state, updated_at)"),
            q("CREATE TABLE IF NOT EXISTS {c} (name text PRIMARY KEY, value bigint NOT NULL)"),
        ]
        self.drop = q("DROP TABLE IF EXISTS {t}, {c}")
        self.claim = q(
            """
            INSERT INTO {t} AS r (key, state, delivery_id, event, generation_id, attempts,
                                  token, lease_until, body, created_at, updated_at)
            VALUES (%(key)s, 'processing', %(delivery_id)s, %(event)s, %(generation_id)s, 1,
                    %(token)s, %(lease_until)s, %(body)s, %(now)s, %(now)s)
            ON CONFLICT (key) DO UPDATE SET
                state = 'processing', attempts = r.attempts + 1, token = excluded.token,
                lease_until = excluded.lease_until, available_at = NULL,
                updated_at = excluded.updated_at
            WHERE r.state = 'failed' OR (r.state = 'processing' AND r.lease_until <= %(now)s)
            RETURNING attempts"""
        )
        self.enqueue = q(
            """
            INSERT INTO {t} AS r (key, state, delivery_id, event, generation_id, attempts,
                                  body, created_at, updated_at)
            VALUES (%(key)s, 'pending', %(delivery_id)s, %(event)s, %(generation_id)s, 0,
                    %(body)s, %(now)s, %(now)s)
            ON CONFLICT (key) DO UPDATE SET
                state = 'pending', token = NULL, lease_until = NULL, available_at = NULL,
                updated_at = excluded.updated_at
            WHERE r.state = 'failed'
            RETURNING attempts"""
        )
        self.state = q("SELECT state FROM {t} WHERE key = %s")
        # The streak ends only when the record really became done.
        self.complete = q(
            """
            WITH done AS (
                UPDATE {t} SET state = 'done', body = NULL, error = NULL, token = NULL,
                    lease_until = NULL, available_at = NULL, updated_at = %(now)s
                WHERE key = %(key)s AND token = %(token)s AND state = 'processing'
                RETURNING 1),
            streak AS (
                UPDATE {c} SET value = 0
                WHERE name = 'failures' AND value <> 0 AND EXISTS (SELECT 1 FROM done))
            SELECT count(*) FROM done"""
        )
        self.fail = q(
            """
            UPDATE {t} SET state = %(state)s, error = %(error)s, token = NULL,
                lease_until = NULL, available_at = %(retry_at)s, updated_at = %(now)s
            WHERE key = %(key)s AND token = %(token)s AND state = 'processing'"""
        )
        self.get = q("SELECT {columns} FROM {t} WHERE key = %s")
        self.records = q("SELECT {columns} FROM {t} ORDER BY updated_at DESC LIMIT %s")
        self.records_in = q(
            "SELECT {columns} FROM {t} WHERE state = %s ORDER BY updated_at DESC LIMIT %s"
        )
        self.replay = q(
            """
            UPDATE {t} SET state = 'pending', available_at = NULL, updated_at = %(now)s
            WHERE key = %(key)s AND state IN ('failed', 'dead')"""
        )
        self.prune = q(
            """
            DELETE FROM {t} WHERE key IN (
                SELECT key FROM {t}
                WHERE state IN ('done', 'failed', 'dead') AND updated_at < %(before)s
                LIMIT {batch})"""
        )
        self.failure = q(
            """
            INSERT INTO {c} AS c (name, value)
            VALUES ('failures', CASE WHEN 1 > %(limit)s THEN 0 ELSE 1 END)
            ON CONFLICT (name) DO UPDATE SET
                value = CASE WHEN c.value + 1 > %(limit)s THEN 0 ELSE c.value + 1 END
            RETURNING value"""
        )
        # SKIP LOCKED: concurrent workers each take different rows, and never wait.
        self.lease = q(
            """
            WITH picked AS (
                SELECT key FROM {t}
                WHERE (state = 'pending' AND coalesce(available_at, 0) <= %(now)s)
                   OR (state = 'processing' AND lease_until <= %(now)s)
                ORDER BY updated_at
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED)
            UPDATE {t} AS r SET state = 'processing', attempts = r.attempts + 1,
                token = md5(random()::text || r.key), lease_until = %(lease_until)s,
                available_at = NULL, updated_at = %(now)s
            FROM picked WHERE r.key = picked.key
            RETURNING r.key, r.state, r.delivery_id, r.event, r.generation_id, r.attempts,
                r.body, r.error, r.created_at, r.updated_at, r.lease_until, r.available_at,
                r.token"""
        )


class PostgresStore(Store):
    """A ledger in PostgreSQL; pooled sync and async connections; transactional."""

    schemes = ("postgresql", "postgres")
    transactional = True
    async_transactions = True
    native_async = True

    def __init__(
        self,
        conninfo: str,
        *,
        table: str = DEFAULT_TABLE,
        pool_max: int = 10,
        pool_timeout: float = 1.5,
        create_schema: bool = True,
    ) -> None:
        if not _NAME.fullmatch(table):
            raise ConfigurationError(
                f"table must be a lower-case SQL name, optionally schema-qualified: {table!r}"
            )
        if pool_max < 1 or pool_timeout <= 0:
            raise ConfigurationError("pool_max must be at least 1 and pool_timeout positive")
        self.table = table
        self.pool_max = pool_max
        self.pool_timeout = pool_timeout
        self.auto_create = create_schema
        try:
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise ConfigurationError(f"bad PostgreSQL URL: {exc}") from exc
        params.setdefault("connect_timeout", 2)
        self._conninfo = psycopg.conninfo.make_conninfo("", **params)
        self._where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
        self._sql = _SQL(table)
        self._ready = False
        self._pid = os.getpid()
        self._pool: ConnectionPool | None = None
        self._apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = (
            weakref.WeakKeyDictionary()
        )
        # Pools of a parent process: kept referenced and never closed here, because
        # closing (or collecting) them would end the parent's sessions on shared sockets.
        self._orphans: list[Any] = []
        self._tx: contextvars.ContextVar[psycopg.Connection[Any] | None] = contextvars.ContextVar(
            f"gptimg_pg_tx_{id(self)}", default=None
        )
        self._atx: contextvars.ContextVar[psycopg.AsyncConnection[Any] | None] = (
            contextvars.ContextVar(f"gptimg_pg_atx_{id(self)}", default=None)
        )

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _OWN_OPTIONS}
        rest = urlencode([(k, v) for k, v in query if k not in _OWN_OPTIONS])
        try:
            return cls(
                urlunsplit(parts._replace(scheme="postgresql", query=rest)),
                table=own.get("table", DEFAULT_TABLE),
                pool_max=int(own.get("pool_max", "10")),
                pool_timeout=float(own.get("pool_timeout", "1.5")),
                create_schema=_flag(own.get("create_schema", "true")),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad PostgreSQL store option in {url!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r}, table={self.table!r})"

    # Pools --------------------------------------------------------------------------

    def _after_fork(self) -> None:
        if self._pid == os.getpid():
            return
        self._orphans += [self._pool, *self._apools.values()]
        self._pool = None
        self._apools = weakref.WeakKeyDictionary()
        self._pid = os.getpid()

    def _pool_options(self) -> dict[str, Any]:
        return {
            "min_size": 0,
            "max_size": self.pool_max,
            "open": False,
            "timeout": self.pool_timeout,
            "kwargs": {"autocommit": True},
            # Give up a failing connect soon, so the next request tries afresh and the
            # pool recovers within seconds of the server coming back.
            "reconnect_timeout": 3.0,
            "name": f"gptimg-webhooks-{self.table}",
        }

    def _sync_pool(self) -> ConnectionPool:
        self._after_fork()
        if self._pool is None:
            pool = ConnectionPool(
                self._conninfo, check=ConnectionPool.check_connection, **self._pool_options()
            )
            pool.open(wait=False)
            self._pool = pool
        return self._pool

    async def _async_pool(self) -> AsyncConnectionPool:
        self._after_fork()
        loop = asyncio.get_running_loop()
        pool = self._apools.get(loop)
        if pool is None:
            pool = AsyncConnectionPool(
                self._conninfo,
                check=AsyncConnectionPool.check_connection,
                **self._pool_options(),
            )
            await pool.open(wait=False)
            # Publish it only once open; a task that raced us here closes its own copy.
            winner = self._apools.setdefault(loop, pool)
            if winner is not pool:
                await pool.close()
                pool = winner
        return pool

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (psycopg.Error, OSError) as exc:
            raise self._lost(what, exc) from exc

    @contextmanager
    def _conn(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """Yield the open transaction's connection, else a pooled autocommit one."""
        tx = self._tx.get()
        if tx is not None:
            with self._errors(what):
                yield tx
            return
        with self._errors(what):
            pool = self._sync_pool()
            with pool.connection() as conn:
                self._ensure(conn)
                yield conn

    @asynccontextmanager
    async def _aconn(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        tx = self._atx.get()
        if tx is not None:
            with self._errors(what):
                yield tx
            return
        with self._errors(what):
            pool = await self._async_pool()
            async with pool.connection() as conn:
                await self._aensure(conn)
                yield conn

    # Schema -------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the tables and index if missing; safe to run from many processes at once."""
        with self._errors("create_schema"):
            pool = self._sync_pool()
            with pool.connection() as conn:
                self._create(conn)

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # CREATE ... IF NOT EXISTS still races on the catalog; serialise first users.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._sql.lock_id,))
            for statement in self._sql.ddl:
                conn.execute(statement)
        self._ready = True

    async def _acreate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._sql.lock_id,))
            for statement in self._sql.ddl:
                await conn.execute(statement)
        self._ready = True

    def drop_schema(self) -> None:
        """Drop this store's tables (tests and teardown)."""
        with self._errors("drop_schema"), self._sync_pool().connection() as conn:
            conn.execute(self._sql.drop)
        self._ready = False

    # Transactions -------------------------------------------------------------------

    def _ensure(self, conn: psycopg.Connection[Any]) -> None:
        if not self._ready and self.auto_create:
            self._create(conn)

    async def _aensure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self._ready and self.auto_create:
            await self._acreate(conn)

    def _lost(self, what: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"PostgreSQL ledger {self._where} ({what}): {type(exc).__name__}: {exc}"
        )

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """Yield a connection in an open transaction that :meth:`complete` joins."""
        if self._tx.get() is not None:
            raise RuntimeError("a ledger transaction is already open in this context")
        in_handlers = False
        try:
            with self._sync_pool().connection() as conn:
                self._ensure(conn)
                with conn.transaction():
                    token = self._tx.set(conn)
                    in_handlers = True
                    try:
                        yield conn
                    finally:
                        self._tx.reset(token)
                    in_handlers = False
        except (psycopg.Error, OSError) as exc:
            if in_handlers:  # the handlers' own SQL failed: a handler error, rolled back
                raise
            raise self._lost("transaction", exc) from exc

    @asynccontextmanager
    async def atransaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Async twin of :meth:`transaction` (an ``AsyncConnection``)."""
        if self._atx.get() is not None:
            raise RuntimeError("a ledger transaction is already open in this context")
        in_handlers = False
        try:
            pool = await self._async_pool()
            async with pool.connection() as conn:
                await self._aensure(conn)
                async with conn.transaction():
                    token = self._atx.set(conn)
                    in_handlers = True
                    try:
                        yield conn
                    finally:
                        self._atx.reset(token)
                    in_handlers = False
        except (psycopg.Error, OSError) as exc:
            if in_handlers:
                raise
            raise self._lost("transaction", exc) from exc

    # Sync ---------------------------------------------------------------------------

    @staticmethod
    def _params(entry: Entry, now: float) -> dict[str, Any]:
        return {
            "key": entry.key,
            "delivery_id": entry.delivery_id,
            "event": entry.event,
            "generation_id": entry.generation_id,
            "body": entry.body,
            "now": now,
        }

    @staticmethod
    def _outcome(state: str | None, defer: bool) -> Claim:
        if state == "done":
            return Claim(ClaimStatus.DONE)
        if state == "dead":
            return Claim(ClaimStatus.DEAD)
        if defer or state == "pending":
            return Claim(ClaimStatus.PENDING)
        return Claim(ClaimStatus.IN_PROGRESS)

    @staticmethod
    def _fail_params(
        key: str, token: str, error: str, *, now: float, dead: bool, retry_at: float | None
    ) -> dict[str, Any]:
        state = State.DEAD if dead else State.PENDING if retry_at is not None else State.FAILED
        return {
            "key": key,
            "token": token,
            "error": error,
            "now": now,
            "state": state.value,
            "retry_at": retry_at if state is State.PENDING else None,
        }

    @staticmethod
    def _leased(rows: Sequence[Sequence[Any]]) -> list[tuple[Record, Claim]]:
        leased = []
        for row in rows:
            rec = Record.from_row(row[:-1])  # the last column is the new lease's token
            leased.append((rec, Claim(ClaimStatus.CLAIMED, rec.attempts, row[-1])))
        return leased

    def claim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        params = self._params(entry, now)
        token = new_token()
        with self._conn("claim") as conn:
            if defer:
                row = conn.execute(self._sql.enqueue, params).fetchone()
                if row is not None:
                    return Claim(ClaimStatus.PENDING)
            else:
                params.update(token=token, lease_until=now + lease)
                row = conn.execute(self._sql.claim, params).fetchone()
                if row is not None:
                    return Claim(ClaimStatus.CLAIMED, row[0], token)
            found = conn.execute(self._sql.state, (entry.key,)).fetchone()
        return self._outcome(found[0] if found else None, defer)

    def complete(self, key: str, token: str, *, now: float) -> bool:
        with self._conn("complete") as conn:
            row = conn.execute(
                self._sql.complete, {"key": key, "token": token, "now": now}
            ).fetchone()
        return bool(row and row[0] == 1)

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
        params = self._fail_params(key, token, error, now=now, dead=dead, retry_at=retry_at)
        with self._conn("fail") as conn:
            return conn.execute(self._sql.fail, params).rowcount == 1

    def get(self, key: str) -> Record | None:
        with self._conn("get") as conn:
            row = conn.execute(self._sql.get, (key,)).fetchone()
        return Record.from_row(row) if row else None

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        with self._conn("records") as conn:
            if state is None:
                rows = conn.execute(self._sql.records, (limit,)).fetchall()
            else:
                rows = conn.execute(self._sql.records_in, (state.value, limit)).fetchall()
        return [Record.from_row(r) for r in rows]

    def replay(self, key: str, *, now: float) -> bool:
        with self._conn("replay") as conn:
            return conn.execute(self._sql.replay, {"key": key, "now": now}).rowcount == 1

    def prune(self, before: float) -> int:
        total = 0
        with self._conn("prune") as conn:
            while True:  # in batches: short transactions, short row locks
                n = conn.execute(self._sql.prune, {"before": before}).rowcount
                total += n
                if n < _PRUNE_BATCH:
                    return total

    def record_failure(self, limit: int) -> bool:
        with self._conn("record_failure") as conn:
            row = conn.execute(self._sql.failure, {"limit": limit}).fetchone()
        return bool(row is not None and row[0] == 0)

    def lease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        if limit < 1:
            return []
        params = {"now": now, "lease_until": now + lease, "limit": limit}
        with self._conn("lease_pending") as conn:
            rows = conn.execute(self._sql.lease, params).fetchall()
        return self._leased(rows)

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
        self._pool = None

    # Async: native psycopg AsyncConnection calls ------------------------------------

    async def aclaim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        params = self._params(entry, now)
        token = new_token()
        async with self._aconn("claim") as conn:
            if defer:
                cur = await conn.execute(self._sql.enqueue, params)
                if await cur.fetchone() is not None:
                    return Claim(ClaimStatus.PENDING)
            else:
                params.update(token=token, lease_until=now + lease)
                cur = await conn.execute(self._sql.claim, params)
                row = await cur.fetchone()
                if row is not None:
                    return Claim(ClaimStatus.CLAIMED, row[0], token)
            cur = await conn.execute(self._sql.state, (entry.key,))
            found = await cur.fetchone()
        return self._outcome(found[0] if found else None, defer)

    async def acomplete(self, key: str, token: str, *, now: float) -> bool:
        async with self._aconn("complete") as conn:
            cur = await conn.execute(self._sql.complete, {"key": key, "token": token, "now": now})
            row = await cur.fetchone()
        return bool(row and row[0] == 1)

    async def afail(
        self,
        key: str,
        token: str,
        error: str,
        *,
        now: float,
        dead: bool = False,
        retry_at: float | None = None,
    ) -> bool:
        params = self._fail_params(key, token, error, now=now, dead=dead, retry_at=retry_at)
        async with self._aconn("fail") as conn:
            cur = await conn.execute(self._sql.fail, params)
            return cur.rowcount == 1

    async def arecord_failure(self, limit: int) -> bool:
        async with self._aconn("record_failure") as conn:
            cur = await conn.execute(self._sql.failure, {"limit": limit})
            row = await cur.fetchone()
        return bool(row is not None and row[0] == 0)

    async def aprune(self, before: float) -> int:
        total = 0
        async with self._aconn("prune") as conn:
            while True:
                cur = await conn.execute(self._sql.prune, {"before": before})
                total += cur.rowcount
                if cur.rowcount < _PRUNE_BATCH:
                    return total

    async def alease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        if limit < 1:
            return []
        params = {"now": now, "lease_until": now + lease, "limit": limit}
        async with self._aconn("lease_pending") as conn:
            cur = await conn.execute(self._sql.lease, params)
            rows = await cur.fetchall()
        return self._leased(rows)

    async def aclose(self) -> None:
        """Close this event loop's pool, then the sync one."""
        loop = asyncio.get_running_loop()
        pool = self._apools.pop(loop, None)
        if pool is not None and self._pid == os.getpid():
            await pool.close()
        await asyncio.to_thread(self.close)
