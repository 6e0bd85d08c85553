from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from gptimg_webhooks.stores import open_store
from gptimg_webhooks.stores.sqlite import SQLiteStore, enable_wal
from tests.stores.conformance import (
    LEASE,
    T0,
    MultiProcessConformance,
    Reopen,
    StoreConformance,
    entry,
)


class TestSQLiteStore(StoreConformance, MultiProcessConformance):
    @pytest.fixture
    def reopen(self, tmp_path: Path) -> Reopen:
        path = str(tmp_path / "ledger.sqlite3")
        return lambda: open_store(f"sqlite:///{path}")


def test_sqlite_url_takes_an_absolute_path_and_busy_timeout(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.db?busy_timeout=0.5")
    assert isinstance(store, SQLiteStore)
    assert (store.path, store.busy_timeout) == (f"{tmp_path}/x.db", 0.5)


def _first_use(path: str, barrier: Any, queue: Any) -> None:
    store = SQLiteStore(path)
    try:
        barrier.wait(timeout=30)
        store.claim(entry(1), now=T0, lease=LEASE)
        queue.put("ok")
    except BaseException as exc:
        queue.put(repr(exc))
    finally:
        store.close()


@pytest.mark.slow
def test_processes_opening_a_new_file_together_all_get_through(tmp_path: Path) -> None:
    # Regression: the switch to WAL failed at once with "database is locked" for a
    # process that raced its siblings on a fresh file, turning a first request into a 503.
    ctx = multiprocessing.get_context("fork")
    for n in range(25):
        path = str(tmp_path / f"fresh-{n}.sqlite3")
        barrier, queue = ctx.Barrier(6), ctx.SimpleQueue()
        procs = [ctx.Process(target=_first_use, args=(path, barrier, queue)) for _ in range(6)]
        for p in procs:
            p.start()
        outcomes = [queue.get() for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert outcomes == ["ok"] * 6


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
