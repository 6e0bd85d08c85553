"""The zero-config default: a SQLite file (stdlib ``sqlite3``) shared by every process on a host.

Correct under ``gunicorn -w 4`` and ``uvicorn --workers 4``: every transition is one
compare-and-set statement (see :mod:`._sql`) run under SQLite's single write lock, so
exactly one process wins a delivery. "Now" is this host's clock, read once the write lock
is held; every process sharing the file shares the host. The database runs in WAL mode
with ``synchronous=NORMAL``: a process crash loses nothing; a power cut may lose the last
few commits, never corrupt the file. The schema is created on first use, and a ledger
an earlier release created gets the columns added since (``traceparent``) on first use.

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's
convention), with an optional ``?busy_timeout=3.0`` in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .._core.errors import ConfigurationError, StoreUnavailable
from .._core.ledger import Applied, Change, Record, State, Store
from . import _sql

__all__ = ["SQLiteStore", "enable_wal"]

_SQL = _sql.sqlite()
logger = logging.getLogger("gptimg_webhooks.stores.sqlite")

#: WAL pages after which a committing connection checkpoints by itself: only a fallback
#: for when the background checkpointer falls behind (SQLite's own default is 1,000).
AUTOCHECKPOINT_PAGES = 10_000


class _Checkpointer:
    """Checkpoint the WAL of every ledger written to, from one background thread.

    Left to SQLite, the commit that crosses ``wal_autocheckpoint`` copies the WAL into
    the database and syncs it before it returns: every few hundred deliveries, one
    request waited tens of milliseconds for the disk. Here the copy is made off the
    request path, with ``PASSIVE``, which never blocks a writer.
    """

    def __init__(self, interval: float = 1.0, idle: float = 30.0) -> None:
        #: Seconds between two checkpoints of a ledger being written to.
        self.interval = interval
        #: Seconds without a write after which the thread closes a ledger's connection.
        self.idle = idle
        #: The absolute paths of the ledgers written to since the last round.
        self._written: set[str] = set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def written(self, path: str) -> None:
        """Note a commit to the ledger at absolute ``path``: cheap enough for every write."""
        self._written.add(path)
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="gptimg-sqlite-checkpoint", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        open_: dict[str, tuple[sqlite3.Connection, float]] = {}
        while True:
            time.sleep(self.interval)
            written, self._written = self._written, set()
            now = time.monotonic()
            for path in written:
                with _in_sqlite:
                    conn = self._checkpoint(path, open_[path][0] if path in open_ else None)
                if conn is None:
                    open_.pop(path, None)
                else:
                    open_[path] = (conn, now)
            for path, (conn, last) in list(open_.items()):
                if now - last > self.idle:
                    del open_[path]
                    with _in_sqlite:
                        conn.close()

    def _checkpoint(self, path: str, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Checkpoint the ledger at ``path``; return the connection to keep, if any."""
        try:
            if conn is None:  # never creating a ledger deleted meanwhile
                conn = sqlite3.connect(f"{Path(path).as_uri()}?mode=rw", uri=True)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # gone or locked: the next write asks again
            logger.debug("could not checkpoint %r: %s", path, exc)
            if conn is not None:
                conn.close()
            return None
        return conn

    def after_fork(self) -> None:
        # The thread did not survive the fork, and its connections are the parent's.
        self._thread = None
        self._written = set()
        self._lock = threading.Lock()


_checkpointer = _Checkpointer()

#: Held by a checkpointer's thread while it is inside SQLite, and by a fork: a child
#: forked mid-call would inherit SQLite's mutexes locked, and hang on its first
#: connection (gunicorn's workers, Celery's, a test's processes).
_in_sqlite = threading.Lock()

#: One lock per ledger file in this process. Its writers queue on it and the next one
#: goes the moment it is free; on SQLite's own lock they would sleep in its busy handler
#: (1, 2, 5, 10 ms... between tries), which made the tail of every write.
_write_locks: dict[str, threading.Lock] = {}


def _after_fork() -> None:
    _in_sqlite.release()  # taken before the fork by the thread that is now the child's
    _checkpointer.after_fork()
    _write_locks.clear()  # one may have been held by a thread the child does not have


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_in_sqlite.acquire, after_in_parent=_in_sqlite.release, after_in_child=_after_fork
    )


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one write transaction on ``conn``: committed, or rolled back."""
    if conn.in_transaction:  # a ROLLBACK that failed earlier left one open
        conn.rollback()
    # IMMEDIATE: take the write lock first, so reads inside see what the write acts on.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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


def _upgrade_schema(conn: sqlite3.Connection) -> None:
    """Add the columns an older records table lacks; a no-op on a current or missing one.

    The columns are read again under the write lock before any is added, so processes
    opening an old file together add each column once.
    """
    present = _columns(conn)
    if not present or not _sql.upgrade(_SQL, present):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _sql.upgrade(_SQL, _columns(conn)):
            conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute(_sql.columns_statement(_SQL))}


class SQLiteStore(Store):
    """A ledger in one SQLite file; one connection per thread and per process.

    ``create=False`` never creates the file, its folder or its tables: a missing
    ledger is :class:`StoreUnavailable` on first use.
    """

    schemes = ("sqlite",)
    loop_first = True

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 3.0,
        create: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not path:
            raise ConfigurationError("SQLite store needs a file path: sqlite:///file.db")
        if not 0 < busy_timeout < math.inf:
            raise ConfigurationError(f"busy_timeout must be positive seconds, not {busy_timeout}")
        self.path = path
        # Below the provider's 5 s timeout, so a jammed lock turns into a 503 it retries.
        self.busy_timeout = busy_timeout
        #: The store's clock (this host's): tests pass their own to move time.
        self.clock = clock
        self.create = create
        self._local = threading.local()
        self._file = os.path.abspath(path)

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> SQLiteStore:
        parts = urlsplit(url)
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        raw = parse_qs(parts.query).get("busy_timeout", ["3.0"])[0]
        try:
            timeout = float(raw)
        except ValueError:
            raise ConfigurationError(
                f"sqlite:// busy_timeout must be seconds, not {raw!r}"
            ) from None
        return cls(path, busy_timeout=timeout, create=create)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # Connections --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.create:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            target, uri = self.path, False
        else:  # mode=rw: open an existing file, never create one
            target, uri = f"{Path(self.path).absolute().as_uri()}?mode=rw", True
        return sqlite3.connect(target, timeout=self.busy_timeout, isolation_level=None, uri=uri)

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection: it waits on a busy ledger, and sets the ledger up."""
        return self._opened("conn", self._configure)

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        enable_wal(conn, self.busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        if self.create:
            for statement in _sql.ddl(_SQL):
                conn.execute(statement)
        # Even without create: an upgrade is no creation, and reads need the columns.
        _upgrade_schema(conn)

    def _quick(self) -> sqlite3.Connection:
        """This thread's connection that never waits: no busy wait, no checkpoint."""
        return self._opened("quick", self._configure_quick)

    def _configure_quick(self, conn: sqlite3.Connection) -> None:
        self._conn()  # the file, its WAL mode and its tables
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")

    def _opened(
        self, name: str, configure: Callable[[sqlite3.Connection], None]
    ) -> sqlite3.Connection:
        """Return this thread's connection ``name``, opened and configured on first use."""
        held: tuple[sqlite3.Connection, int] | None = getattr(self._local, name, None)
        pid = os.getpid()
        if held is not None and held[1] == pid:
            return held[0]
        # New thread, or a forked child: never share a connection across a fork.
        conn = self._connect()
        try:
            configure(conn)
        except BaseException:
            conn.close()
            raise
        setattr(self._local, name, (conn, pid))
        return conn

    def _write_lock(self) -> threading.Lock:
        lock = _write_locks.get(self._file)
        return lock if lock is not None else _write_locks.setdefault(self._file, threading.Lock())

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection (in a write transaction if asked); wrap errors."""
        try:
            conn = self._conn()
            if not write:
                yield conn
                return
            lock = self._write_lock()
            if not lock.acquire(timeout=self.busy_timeout):
                raise StoreUnavailable(
                    f"SQLite ledger {self.path!r}: writers stuck in this process"
                )
            try:
                with _transaction(conn):
                    yield conn
            finally:
                lock.release()
            _checkpointer.written(self._file)
        except sqlite3.Error as exc:
            if not self.create and not os.path.exists(self.path):
                raise StoreUnavailable(f"no ledger at {self.path!r}") from exc
            raise StoreUnavailable(f"SQLite ledger {self.path!r}: {exc}") from exc

    # Primitives ---------------------------------------------------------------------

    def apply(self, change: Change) -> Applied:
        with self._db(write=True) as conn:
            return self._apply_in(conn, change)

    def _apply_in(self, conn: sqlite3.Connection, change: Change) -> Applied:
        """Apply ``change`` inside the write transaction open on ``conn``."""
        transition = change.transition
        stmt = _sql.apply_statement(_SQL, transition, bool(change.counter))
        params = _sql.apply_params(change)
        params["now"] = self.clock()  # read under the write lock: no stale "now"
        row = conn.execute(stmt.sql, params).fetchone()
        found = None
        if row is None:
            found = conn.execute(stmt.found, params).fetchone()
        elif stmt.reset is not None:
            conn.execute(stmt.reset, params)
        return _sql.applied(transition, row, found)

    async def aapply(self, change: Change) -> Applied:
        """Apply ``change`` on the event loop when that waits for nothing; else in a thread.

        A write from a thread of a busy process waits for the GIL while it holds the
        ledger's lock, and every other writer queues behind it. On the loop a change is a
        write to the page cache (WAL, ``synchronous=NORMAL``: tens of µs), tried on a
        connection that never waits; when another writer holds the lock it goes to a
        thread, which waits as :meth:`apply` does. Either way the change is one
        transaction, its "now" read under the lock.
        """
        applied = self._apply_now(change)
        if applied is not None:
            return applied
        return await asyncio.to_thread(self.apply, change)

    def _apply_now(self, change: Change) -> Applied | None:
        """Apply ``change`` at once, or return None without having waited for anything."""
        lock = self._write_lock()
        if not lock.acquire(blocking=False):
            return None
        try:
            conn = self._quick()
            with _transaction(conn):  # busy at once if another process writes
                applied = self._apply_in(conn, change)
        except sqlite3.Error:
            return None  # locked by another process, or anything else: the thread decides
        finally:
            lock.release()
        _checkpointer.written(self._file)
        return applied

    def due(self, limit: int) -> Sequence[str]:
        with self._db() as conn:
            rows = conn.execute(
                _sql.due_statement(_SQL), {"now": self.clock(), "limit": limit}
            ).fetchall()
        return [key for (key,) in rows]

    def get(self, key: str) -> Record | None:
        with self._db() as conn:
            row = conn.execute(_sql.get_statement(_SQL), {"key": key}).fetchone()
        return Record.from_row(row) if row else None

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        params = {"state": state.value if state else None, "limit": limit}
        with self._db() as conn:
            rows = conn.execute(_sql.records_statement(_SQL, state is not None), params).fetchall()
        return [Record.from_row(r) for r in rows]

    def prune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        statement = _sql.prune_statement(_SQL, frozenset(states))
        params = {"now": self.clock(), "older_than": older_than}
        total = 0
        for _ in range(1_000_000):  # bounded: a billion rows at most per call
            # Each batch is its own short write, so writers queue behind none for long.
            with self._db(write=True) as conn:
                n = conn.execute(statement, params).rowcount
            total += n
            if n < _SQL.prune_batch:
                break
        return total

    def bump(self, counter: str, limit: int, by: int = 1) -> bool:
        params = {"counter": counter, "limit": limit, "by": by}
        with self._db(write=True) as conn:
            (value,) = conn.execute(_sql.bump_statement(_SQL), params).fetchone()
        return _sql.bumped(value, by, limit)

    def close(self) -> None:
        for name in ("conn", "quick"):
            held = getattr(self._local, name, None)
            if held is not None and held[1] == os.getpid():
                held[0].close()
            setattr(self._local, name, None)
