"""A PostgreSQL ledger (psycopg 3), shared by every process on every host, with transactions.

URL: ``postgresql://user:password@host:5432/dbname?table=gptimg_webhook_deliveries``
(``postgres://`` too). Options of this store, removed before the URL reaches libpq:

- ``table``: the records table, optionally schema-qualified (``ops.webhooks``); the
  failure streaks live in ``<table>_counters``. Default ``gptimg_webhook_deliveries``.
- ``pool_max``: connections per process and per event loop (default 10).
- ``pool_timeout``: seconds to wait for a pooled connection before answering 503
  (default 1.5, well inside the provider's 5 s).
- ``create_schema``: ``false`` to never run DDL (create it with :meth:`create_schema`
  or ``gptimg-webhooks`` tooling under an owner role instead). ``from_url(url,
  create=False)`` (read-only tools) never runs DDL either.

Every other query option (``connect_timeout``, ``sslmode``, ``application_name``...)
is libpq's; ``connect_timeout`` defaults to 2 s here.

Schema: created on first use by each process (``CREATE ... IF NOT EXISTS`` under a
transaction-scoped advisory lock, so processes starting together do not race), or
explicitly with :meth:`PostgresStore.create_schema`. Either also adds, under that lock,
the columns a table of an earlier release lacks (``traceparent``): with
``create_schema=false``, run :meth:`~PostgresStore.create_schema` once after upgrading.
Layout::

    <table>          key text PRIMARY KEY, state, delivery_id, event, generation_id,
                     attempts, token, lease_until, available_at, body bytea, error,
                     created_at, updated_at  (times are epoch seconds, double precision),
                     traceparent text (the receiving span's, for a runner's span to link)
    <table>_counters name text PRIMARY KEY, value bigint

Every transition is one compare-and-set statement generated from the state machine (see
:mod:`._sql`); lease deadlines and expiry use the server's clock
(``statement_timestamp()``), so no client's clock can break a lease. ``complete`` resets
its streak counter in the same statement. ``prune`` deletes in batches.

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
import math
import os
import re
import weakref
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from gptimg_webhooks._core.errors import (
    ConfigurationError,
    StoreUnavailable,
    TransactionAborted,
)
from gptimg_webhooks._core.ledger import (
    LEASE,
    Applied,
    Change,
    Claim,
    ClaimStatus,
    Record,
    State,
    Store,
)

from . import _sql

__all__ = ["PostgresStore"]

DEFAULT_TABLE = "gptimg_webhook_deliveries"
_NAME = re.compile(r"(?:[a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,50}")
_OWN_OPTIONS = ("table", "pool_max", "pool_timeout", "create_schema")
#: Prune gives up after this many batches per call; the next call goes on.
_MAX_BATCHES = 10_000
#: ALTER TABLE waits for every open transaction on the table, and every query queues
#: behind it: give up soon (a 503 the provider retries) and try again on the next use.
_UPGRADE_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '2s'"


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"expected a boolean, got {value!r}")


def _leased(row: Sequence[Any]) -> tuple[Record, Claim]:
    done = _sql.applied(LEASE, row, None)
    assert done.record is not None  # LEASE returns the record
    return done.record, Claim(ClaimStatus.CLAIMED, done.attempts, done.token)


class PostgresStore(Store):
    """A ledger in PostgreSQL; pooled sync and async connections; transactional."""

    schemes = ("postgresql", "postgres")
    transactional = True
    async_transactions = True
    native_async = True
    server_time = True

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
        if pool_max < 1 or not 0 < pool_timeout < math.inf:
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
        self._d = _sql.postgres(table)
        self._lock_id = int.from_bytes(
            hashlib.sha256(f"gptimg_webhooks:{table}".encode()).digest()[:8], "big", signed=True
        )
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
    def from_url(cls, url: str, *, create: bool = True) -> PostgresStore:
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
                create_schema=_flag(own.get("create_schema", "true")) and create,
            )
        except ConfigurationError:
            raise
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
    def _errors(self, what: str, handlers: list[bool] | None = None) -> Iterator[None]:
        """Turn the driver's errors into StoreUnavailable: the one place this module does.

        While ``handlers[0]`` is true the handlers' code runs: their errors are theirs
        and pass unchanged.
        """
        try:
            yield
        except (psycopg.Error, OSError) as exc:
            if handlers and handlers[0]:
                raise
            raise StoreUnavailable(
                f"PostgreSQL ledger {self._where} ({what}): {type(exc).__name__}: {exc}"
            ) from exc

    @contextmanager
    def _conn(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """Yield the open transaction's connection, else a pooled autocommit one."""
        tx = self._tx.get()
        if tx is not None:
            self.check_transaction(tx)
            with self._errors(what):
                yield tx
            return
        with self._errors(what), self._sync_pool().connection() as conn:
            self._ensure(conn)
            yield conn

    @asynccontextmanager
    async def _aconn(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        tx = self._atx.get()
        if tx is not None:
            self.check_transaction(tx)
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
        """Create what is missing (tables, index, columns); safe from many processes at once."""
        with self._errors("create_schema"):
            pool = self._sync_pool()
            with pool.connection() as conn:
                self._create(conn)

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # CREATE ... IF NOT EXISTS still races on the catalog; serialise first users.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
            for statement in _sql.ddl(self._d):
                conn.execute(statement)
            # Read under the lock: a process that got it first may have added them.
            present = [name for (name,) in conn.execute(_sql.columns_statement(self._d))]
            upgrade = _sql.upgrade(self._d, present)
            if upgrade:
                conn.execute(_UPGRADE_LOCK_TIMEOUT)
            for statement in upgrade:
                conn.execute(statement)
        self._ready = True

    async def _acreate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
            for statement in _sql.ddl(self._d):
                await conn.execute(statement)
            cur = await conn.execute(_sql.columns_statement(self._d))
            present = [name for (name,) in await cur.fetchall()]
            upgrade = _sql.upgrade(self._d, present)
            if upgrade:
                await conn.execute(_UPGRADE_LOCK_TIMEOUT)
            for statement in upgrade:
                await conn.execute(statement)
        self._ready = True

    def drop_schema(self) -> None:
        """Drop this store's tables (tests and teardown)."""
        with self._errors("drop_schema"), self._sync_pool().connection() as conn:
            for statement in _sql.drop(self._d):
                conn.execute(statement)
        self._ready = False

    def _ensure(self, conn: psycopg.Connection[Any]) -> None:
        if not self._ready and self.auto_create:
            self._create(conn)

    async def _aensure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self._ready and self.auto_create:
            await self._acreate(conn)

    # Transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """Yield a connection in an open transaction that :meth:`complete` joins."""
        if self._tx.get() is not None:
            raise RuntimeError("a ledger transaction is already open in this context")
        handlers = [False]
        with self._errors("transaction", handlers), self._sync_pool().connection() as conn:
            self._ensure(conn)
            with conn.transaction():
                token = self._tx.set(conn)
                handlers[0] = True
                try:
                    yield conn
                finally:
                    self._tx.reset(token)
                handlers[0] = False  # what fails from here on (the COMMIT) is the store's

    @asynccontextmanager
    async def atransaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Async twin of :meth:`transaction` (an ``AsyncConnection``)."""
        if self._atx.get() is not None:
            raise RuntimeError("a ledger transaction is already open in this context")
        handlers = [False]
        with self._errors("transaction", handlers):
            pool = await self._async_pool()
            async with pool.connection() as conn:
                await self._aensure(conn)
                async with conn.transaction():
                    token = self._atx.set(conn)
                    handlers[0] = True
                    try:
                        yield conn
                    finally:
                        self._atx.reset(token)
                    handlers[0] = False

    def check_transaction(self, tx: Any) -> None:
        """Raise TransactionAborted when a handler's caught SQL error aborted ``tx``."""
        if tx.info.transaction_status == TransactionStatus.INERROR:
            raise TransactionAborted(
                "a handler's SQL error aborted the transaction; its writes are rolled back"
            )

    # Primitives ---------------------------------------------------------------------

    def _apply_args(self, change: Change) -> tuple[_sql.Apply, dict[str, Any]]:
        # The streak reset rides in the statement (a CTE): Apply.reset is always None here.
        stmt = _sql.apply_statement(self._d, change.transition, bool(change.counter))
        return stmt, _sql.apply_params(change)

    def apply(self, change: Change) -> Applied:
        transition = change.transition
        stmt, params = self._apply_args(change)
        with self._conn(transition.name) as conn:
            row = conn.execute(stmt.sql, params).fetchone()
            found = None if row is not None else conn.execute(stmt.found, params).fetchone()
        return _sql.applied(transition, row, found)

    # A measured optimisation of the named operation (benchmarks/lease_due.py): one
    # FOR UPDATE SKIP LOCKED statement, generated from the same LEASE transition, instead
    # of due() and a compare-and-set per key; runners in parallel no longer race for keys.
    def lease_due(self, *, lease: float, limit: int = 10) -> list[tuple[Record, Claim]]:
        if limit < 1:
            return []
        params = {"limit": limit, "lease": float(lease)}
        with self._conn("lease_due") as conn:
            rows = conn.execute(_sql.lease_many_statement(self._d), params).fetchall()
        return [_leased(row) for row in rows]

    async def alease_due(self, *, lease: float, limit: int = 10) -> list[tuple[Record, Claim]]:
        if limit < 1:
            return []
        params = {"limit": limit, "lease": float(lease)}
        async with self._aconn("lease_due") as conn:
            cur = await conn.execute(_sql.lease_many_statement(self._d), params)
            rows = await cur.fetchall()
        return [_leased(row) for row in rows]

    def due(self, limit: int) -> Sequence[str]:
        with self._conn("due") as conn:
            rows = conn.execute(_sql.due_statement(self._d), {"limit": limit}).fetchall()
        return [key for (key,) in rows]

    def get(self, key: str) -> Record | None:
        with self._conn("get") as conn:
            row = conn.execute(_sql.get_statement(self._d), {"key": key}).fetchone()
        return Record.from_row(row) if row else None

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        params = {"state": state.value if state else None, "limit": limit}
        statement = _sql.records_statement(self._d, state is not None)
        with self._conn("records") as conn:
            rows = conn.execute(statement, params).fetchall()
        return [Record.from_row(r) for r in rows]

    def prune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        statement = _sql.prune_statement(self._d, frozenset(states))
        total = 0
        with self._conn("prune") as conn:
            for _ in range(_MAX_BATCHES):  # in batches: short transactions, short row locks
                n = conn.execute(statement, {"older_than": older_than}).rowcount
                total += n
                if n < self._d.prune_batch:
                    break
        return total

    def bump(self, counter: str, limit: int, by: int = 1) -> bool:
        params = {"counter": counter, "limit": limit, "by": by}
        with self._conn("bump") as conn:
            row = conn.execute(_sql.bump_statement(self._d), params).fetchone()
        assert row is not None  # an upsert with RETURNING always answers
        return _sql.bumped(row[0], by, limit)

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
        self._pool = None

    # Async: native psycopg AsyncConnection calls ------------------------------------

    async def aapply(self, change: Change) -> Applied:
        transition = change.transition
        stmt, params = self._apply_args(change)
        async with self._aconn(transition.name) as conn:
            row = await (await conn.execute(stmt.sql, params)).fetchone()
            found = None
            if row is None:
                found = await (await conn.execute(stmt.found, params)).fetchone()
        return _sql.applied(transition, row, found)

    async def adue(self, limit: int) -> Sequence[str]:
        async with self._aconn("due") as conn:
            cur = await conn.execute(_sql.due_statement(self._d), {"limit": limit})
            rows = await cur.fetchall()
        return [key for (key,) in rows]

    async def aprune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        statement = _sql.prune_statement(self._d, frozenset(states))
        total = 0
        async with self._aconn("prune") as conn:
            for _ in range(_MAX_BATCHES):
                n = (await conn.execute(statement, {"older_than": older_than})).rowcount
                total += n
                if n < self._d.prune_batch:
                    break
        return total

    async def abump(self, counter: str, limit: int, by: int = 1) -> bool:
        params = {"counter": counter, "limit": limit, "by": by}
        async with self._aconn("bump") as conn:
            row = await (await conn.execute(_sql.bump_statement(self._d), params)).fetchone()
        assert row is not None
        return _sql.bumped(row[0], by, limit)

    async def aclose(self) -> None:
        """Close this event loop's pool, then the sync one."""
        loop = asyncio.get_running_loop()
        pool = self._apools.pop(loop, None)
        if pool is not None and self._pid == os.getpid():
            await pool.close()
        await asyncio.to_thread(self.close)
