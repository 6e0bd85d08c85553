from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from gptimg_webhooks import ConfigurationError, StoreUnavailable
from gptimg_webhooks._core.ledger import ClaimStatus, State
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.stores import sqlite as sqlite_store
from gptimg_webhooks.stores.sqlite import SQLiteStore, enable_wal
from tests.stores.conformance import (
    LEASE,
    MultiProcessConformance,
    Reopen,
    StoreConformance,
    entry,
    race_claims,
    traceparent,
)
from tests.support import forked


class TestSQLiteStore(StoreConformance, MultiProcessConformance):
    @pytest.fixture
    def reopen(self, tmp_path: Path) -> Reopen:
        path = str(tmp_path / "ledger.sqlite3")
        return lambda: open_store(f"sqlite:///{path}")


def test_sqlite_url_takes_an_absolute_path_and_busy_timeout(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.db?busy_timeout=0.5")
    assert isinstance(store, SQLiteStore)
    assert (store.path, store.busy_timeout) == (f"{tmp_path}/x.db", 0.5)


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf", "nan"])
def test_bad_busy_timeout_is_a_configuration_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        open_store(f"sqlite:///{tmp_path}/x.db?busy_timeout={value}")


def test_create_false_never_creates_the_file_or_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ledger.sqlite3"
    store = open_store(f"sqlite:///{path}", create=False)
    try:
        for call in (lambda: store.get("k"), lambda: store.records(), lambda: store.due(5)):
            with pytest.raises(StoreUnavailable, match="no ledger at"):
                call()
        with pytest.raises(StoreUnavailable, match="no ledger at"):
            store.claim(entry(1), lease=LEASE)
    finally:
        store.close()
    assert not path.parent.exists()


def test_create_false_uses_an_existing_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    writer = open_store(url)
    claim = writer.claim(entry(1), lease=LEASE)
    writer.close()
    reader = open_store(url, create=False)
    try:
        assert reader.get(entry(1).key).state is State.PROCESSING  # type: ignore[union-attr]
        assert reader.complete(entry(1).key, claim.token)
    finally:
        reader.close()


def test_create_false_creates_no_tables_in_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    sqlite3.connect(path).close()  # an empty database that is not a ledger
    store = open_store(f"sqlite:///{path}", create=False)
    try:
        with pytest.raises(StoreUnavailable, match="no such table"):
            store.get("k")
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def _old_ledger(path: Path) -> None:
    """Write the layout earlier releases created, with one failed record."""
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE gptimg_webhook_deliveries (
                key TEXT PRIMARY KEY, state TEXT NOT NULL, delivery_id TEXT NOT NULL,
                event TEXT, generation_id TEXT, attempts INTEGER NOT NULL DEFAULT 0,
                token TEXT, lease_until REAL, available_at REAL, body BLOB, error TEXT,
                created_at REAL NOT NULL, updated_at REAL NOT NULL);
            CREATE TABLE gptimg_webhook_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO gptimg_webhook_deliveries (key, state, delivery_id, attempts, body,
                error, created_at, updated_at) VALUES ('old', 'failed', 'd', 1, x'00ff', 'e', 1, 1);
            """
        )
    conn.close()


def _columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM pragma_table_info('gptimg_webhook_deliveries')")
        found = [name for (name,) in rows]
    conn.close()
    return found


def test_a_ledger_from_the_previous_release_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    _old_ledger(path)
    assert "traceparent" not in _columns(path)
    store = open_store(f"sqlite:///{path}")
    try:
        assert store.get("old").traceparent is None  # type: ignore[union-attr]
        claim = store.claim(entry("old"), lease=LEASE)
        assert (claim.status, claim.attempt) == (ClaimStatus.CLAIMED, 2)
        assert store.complete("old", claim.token)
        stamped = replace(entry(1), traceparent=traceparent())
        store.enqueue(stamped)
        assert store.get(stamped.key).traceparent == stamped.traceparent  # type: ignore[union-attr]
    finally:
        store.close()
    assert _columns(path)[-1] == "traceparent"


@pytest.mark.slow
@pytest.mark.parametrize("create", [True, False])
def test_processes_opening_an_older_ledger_together_add_its_new_column_once(
    tmp_path: Path, create: bool
) -> None:
    # Each process checks for the column on its first connection: they race to add it.
    path = tmp_path / "old.sqlite3"
    _old_ledger(path)
    url = f"sqlite:///{path}"
    outcomes = race_claims(lambda: open_store(url, create=create), keys=3, processes=True)
    for key, statuses in outcomes.items():
        assert statuses.count(ClaimStatus.CLAIMED) == 1, (key, statuses)
    assert _columns(path).count("traceparent") == 1


def test_prune_deletes_in_batches_of_short_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    store = open_store(url)
    assert isinstance(store, SQLiteStore)
    batch = 1000  # the SQLite dialect's batch size
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    store.get("create the schema")
    with conn:
        conn.executemany(
            "INSERT INTO gptimg_webhook_deliveries (key, state, delivery_id, created_at, "
            "updated_at) VALUES (?, 'done', 'd', 1, 1)",
            [(f"old-{n}",) for n in range(2 * batch + 5)],
        )
    conn.close()
    statements: list[str] = []
    store._conn().set_trace_callback(statements.append)
    try:
        assert store.prune(60) == 2 * batch + 5
    finally:
        store.close()
    deletes = [s for s in statements if s.startswith("DELETE")]
    assert len(deletes) == 3  # two full batches and the rest, each its own statement


def _first_use(path: str, barrier: Any) -> str:
    store = SQLiteStore(path)
    try:
        barrier.wait(timeout=30)
        return store.claim(entry(1), lease=LEASE).status.value
    finally:
        store.close()


@pytest.mark.slow
def test_processes_opening_a_new_file_together_all_get_through(tmp_path: Path) -> None:
    # Regression: the switch to WAL failed at once with "database is locked" for a
    # process that raced its siblings on a fresh file, turning a first request into a 503.
    for n in range(25):
        path = str(tmp_path / f"fresh-{n}.sqlite3")
        barrier = forked.context.Barrier(6)
        outcomes = forked.in_children([partial(_first_use, path, barrier)] * 6)
        assert sorted(outcomes) == ["claimed"] + ["in_progress"] * 5


def test_enable_wal_waits_for_the_lock_where_sqlite_would_not(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    # No busy handler: what SQLite gives a sibling switching a new file to WAL at once.
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        conn.execute("PRAGMA journal_mode = WAL")
    release = threading.Timer(0.3, holder.execute, ["ROLLBACK"])
    release.start()
    enable_wal(conn, timeout=10)
    release.join()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    holder.close()
    conn.close()


def _wal_frames(path: Path) -> int:
    """Frames in the WAL now (a PASSIVE checkpoint's report, from a fresh connection)."""
    conn = sqlite3.connect(path)
    try:
        busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0
        return int(frames)
    finally:
        conn.close()


def _checkpointed_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float
) -> tuple[SQLiteStore, Path]:
    """A ledger whose background checkpoints come every ``interval`` seconds."""
    checkpointer = sqlite_store._Checkpointer(interval)
    monkeypatch.setattr(sqlite_store, "_checkpointer", checkpointer)
    path = tmp_path / "ledger.sqlite3"
    return SQLiteStore(str(path)), path


def _write(store: SQLiteStore, first: int, count: int) -> None:
    for n in range(first, first + count):
        claim = store.claim(entry(n), lease=LEASE)
        assert store.complete(entry(n).key, claim.token)


def test_commits_leave_the_wal_to_the_background_checkpointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite's default: the commit crossing 1,000 frames checkpoints, waiting on the disk.
    store, path = _checkpointed_ledger(tmp_path, monkeypatch, 3600)
    _write(store, 0, 600)
    assert _wal_frames(path) > 1000
    store.close()


def test_the_background_checkpointer_lets_the_wal_start_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, path = _checkpointed_ledger(tmp_path, monkeypatch, 0.05)
    _write(store, 0, 600)
    time.sleep(1.0)  # twenty rounds of the thread; the probe below checkpoints too, so once
    _write(store, 600, 1)  # the first write after a full checkpoint starts the WAL over
    frames = _wal_frames(path)
    assert frames < 100
    store.close()


def test_writers_of_one_process_wait_their_turn_no_longer_than_busy_timeout(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "ledger.sqlite3"), busy_timeout=0.3)
    store.claim(entry(1), lease=LEASE)  # the file exists, its lock too
    lock = sqlite_store._write_locks[os.path.abspath(store.path)]
    with lock:  # a writer of this process that does not finish
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="writers stuck"):
            store.claim(entry(2), lease=LEASE)
        assert 0.25 < time.monotonic() - started < 3
    assert store.claim(entry(2), lease=LEASE).status is ClaimStatus.CLAIMED
    store.close()


def test_threads_writing_at_once_all_get_through_under_a_short_busy_timeout(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "ledger.sqlite3"), busy_timeout=0.25)
    store.claim(entry(0), lease=LEASE)

    def claims(first: int) -> list[ClaimStatus]:
        return [store.claim(entry(n), lease=LEASE).status for n in range(first, first + 40)]

    with ThreadPoolExecutor(8) as pool:
        found = [s for batch in pool.map(claims, range(1, 321, 40)) for s in batch]
    assert found == [ClaimStatus.CLAIMED] * 320


def test_the_background_checkpointer_never_creates_a_deleted_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_checkpointer", sqlite_store._Checkpointer(0.05))
    folder = tmp_path / "gone"
    store = SQLiteStore(str(folder / "ledger.sqlite3"))
    _write(store, 0, 5)
    store.close()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    time.sleep(0.5)  # ten rounds of the thread
    assert not folder.exists()


def test_async_changes_are_applied_on_the_loop_when_nothing_holds_the_lock(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "ledger.sqlite3"))
    threads: set[int] = set()
    apply = store.apply

    def counted(change: Any) -> Any:
        threads.add(threading.get_ident())
        return apply(change)

    store.apply = counted  # type: ignore[method-assign]

    async def main() -> list[ClaimStatus]:
        claim = await store.aclaim(entry(1), lease=LEASE)
        assert await store.acomplete(entry(1).key, claim.token)
        again = await store.aclaim(entry(1), lease=LEASE)  # the found row, read on the loop
        return [claim.status, again.status]

    assert asyncio.run(main()) == [ClaimStatus.CLAIMED, ClaimStatus.DONE]
    assert not threads  # no thread was asked
    record = store.get(entry(1).key)
    assert record is not None and record.state is State.DONE
    store.close()


def test_async_change_waits_in_a_thread_while_another_connection_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    store = SQLiteStore(str(path), busy_timeout=5.0)
    store.claim(entry(0), lease=LEASE)  # the file and its tables
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write, holding SQLite's lock

    async def main() -> ClaimStatus:
        pending = asyncio.ensure_future(store.aclaim(entry(1), lease=LEASE))
        await asyncio.sleep(0.2)
        assert not pending.done()  # waiting in a thread, the loop free meanwhile
        other.execute("COMMIT")
        return (await pending).status

    assert asyncio.run(main()) is ClaimStatus.CLAIMED
    other.close()
    store.close()


def test_async_change_goes_to_a_thread_while_this_process_writes(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "ledger.sqlite3"))
    store.claim(entry(0), lease=LEASE)
    lock = sqlite_store._write_locks[os.path.abspath(store.path)]

    async def main() -> ClaimStatus:
        lock.acquire()  # a writer thread of this process, mid-write
        pending = asyncio.ensure_future(store.aclaim(entry(1), lease=LEASE))
        await asyncio.sleep(0.1)
        assert not pending.done()
        lock.release()
        return (await pending).status

    assert asyncio.run(main()) is ClaimStatus.CLAIMED
    store.close()


def test_a_fork_waits_while_the_checkpointer_is_inside_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A child forked while the thread was inside SQLite inherited SQLite's mutexes locked,
    # and hung on its first connection (one fork in ten beside a busy thread here).
    store, _ = _checkpointed_ledger(tmp_path, monkeypatch, 0.05)
    checkpointer, inside, leave = sqlite_store._checkpointer, threading.Event(), threading.Event()
    checkpoint = checkpointer._checkpoint

    def slow_checkpoint(path: str, conn: sqlite3.Connection | None) -> Any:
        inside.set()
        leave.wait(timeout=10)
        return checkpoint(path, conn)

    monkeypatch.setattr(checkpointer, "_checkpoint", slow_checkpoint)
    _write(store, 0, 1)
    assert inside.wait(timeout=10)
    started = time.monotonic()
    threading.Timer(0.3, leave.set).start()

    def child() -> tuple[float, str]:
        return time.monotonic(), store.claim(entry(2), lease=LEASE).status.value

    [(forked_at, status)] = forked.in_children([child])
    assert forked_at - started > 0.25  # the fork waited for the thread to leave SQLite
    assert status == "claimed"
    store.close()
