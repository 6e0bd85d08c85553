"""Ledger figures: claim latency against ledger size, the network stores against a bare
round trip on the same server, and the memory ledger's bytes per record."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gptimg_webhooks._core.ledger import Entry, Store
from gptimg_webhooks.stores.memory import MemoryStore
from gptimg_webhooks.stores.sqlite import SQLiteStore

from .common import summary

EVENT = "generation.succeeded"
#: BENCH_SCALE shrinks every size and batch (the smoke test runs in seconds with 0.02).
_SCALE = float(os.environ.get("BENCH_SCALE", "1"))


def _scaled(n: int) -> int:
    return max(10, int(n * _SCALE))


def entry(tag: str, i: int) -> Entry:
    key = hashlib.sha256(f"{tag}:{i}".encode()).hexdigest()
    return Entry(key, str(uuid.uuid4()), EVENT, f"gen_{i}", b"{}")


def _cycle(store: Store, tag: str, n: int) -> float:
    """Claim and complete ``n`` new deliveries; return µs per delivery."""
    batch = [entry(tag, i) for i in range(n)]
    gc.collect()
    started = time.perf_counter()
    for e in batch:
        claim = store.claim(e, lease=120.0)
        store.complete(e.key, claim.token)
    return (time.perf_counter() - started) / n * 1e6


def _fill_memory(store: MemoryStore, count: int) -> None:
    for i in range(count):
        e = entry("fill", i)
        store.complete(e.key, store.claim(e, lease=120.0).token)


def _fill_sqlite(store: SQLiteStore, count: int, state: str = "done") -> None:
    _cycle(store, "schema", 1)  # creates the tables
    conn = sqlite3.connect(store.path)
    table = next(
        name
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        if "counter" not in name
    )
    now = time.time()
    rows = (
        (
            hashlib.sha256(f"fill:{i}".encode()).hexdigest(),
            state,
            str(uuid.uuid4()),
            EVENT,
            f"gen_{i}",
            1,
            now,
            now + i * 1e-6,  # in arrival order, as the sweep takes them
        )
        for i in range(count)
    )
    with conn:
        conn.executemany(
            f'INSERT INTO "{table}" (key, state, delivery_id, event, generation_id, attempts, '
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )
    conn.close()


def by_size(quick: bool, log: Any = print) -> dict[str, Any]:
    """Claim + done mark latency of the memory and SQLite ledgers at growing sizes."""
    sizes: Sequence[int] = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    sizes = [_scaled(s) for s in sizes]
    n, rounds = (500, 3) if quick else (2000, 5)
    n = _scaled(n)
    out: dict[str, Any] = {"memory": {}, "sqlite": {}}
    with tempfile.TemporaryDirectory(prefix="gptimg-bench-") as tmp:
        for size in sizes:
            memory = MemoryStore(max_records=size + n * (rounds + 1))
            _fill_memory(memory, size)
            sqlite = SQLiteStore(f"{tmp}/ledger-{size}.sqlite3")
            _fill_sqlite(sqlite, size)
            mem_runs, sql_runs = [], []
            for r in range(rounds):  # interleaved
                mem_runs.append(_cycle(memory, f"m{r}", n))
                sql_runs.append(_cycle(sqlite, f"s{r}", n))
            out["memory"][str(size)] = summary(mem_runs)
            out["sqlite"][str(size)] = summary(sql_runs)
            # The recovery sweep's query (the keeper runs it every sweep_interval): it must
            # not walk the done records, which are nearly all of them.
            for name, store in (("memory", memory), ("sqlite", sqlite)):
                started = time.perf_counter()
                store.due(20)
                sweep = (time.perf_counter() - started) * 1e3
                out[name].setdefault("sweep_ms", {})[str(size)] = sweep
            log(
                f"  ledger of {size:>9,} records: memory {statistics.median(mem_runs):6.1f} us, "
                f"SQLite {statistics.median(sql_runs):6.1f} us per claim + done mark"
            )
            sqlite.close()
            del memory
            gc.collect()
    for name in ("memory", "sqlite"):
        first, last = str(sizes[0]), str(sizes[-1])
        out[name]["growth"] = out[name][last]["median"] / out[name][first]["median"]
    return out


def backlog(quick: bool, log: Any = print) -> dict[str, Any]:
    """The recovery sweep's query (``due(20)``) against a backlog of pending records.

    A backlog is what deferred mode builds under a burst, or what runners that fell
    behind leave; workers run the same query every poll.
    """
    sizes = [_scaled(s) for s in ((1_000, 10_000) if quick else (1_000, 10_000, 100_000))]
    out: dict[str, Any] = {"memory": {}, "sqlite": {}}
    with tempfile.TemporaryDirectory(prefix="gptimg-bench-") as tmp:
        for size in sizes:
            memory = MemoryStore(max_records=size + 10)
            for i in range(size):
                memory.enqueue(entry("backlog", i))
            sqlite = SQLiteStore(f"{tmp}/backlog-{size}.sqlite3")
            _fill_sqlite(sqlite, size, state="pending")
            for name, store in (("memory", memory), ("sqlite", sqlite)):
                runs = []
                for _ in range(9):
                    started = time.perf_counter()
                    found = store.due(20)
                    runs.append((time.perf_counter() - started) * 1e3)
                assert len(found) == 20
                out[name][str(size)] = statistics.median(runs)
            log(
                f"  backlog of {size:>7,} pending: sweep memory {out['memory'][str(size)]:.3f} "
                f"ms, SQLite {out['sqlite'][str(size)]:.3f} ms"
            )
            sqlite.close()
    return out


def _bare_timer(call: Callable[[int], object], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - started) / n * 1e6


def network(quick: bool, log: Any = print) -> dict[str, Any]:
    """Redis and PostgreSQL: the store's claim + done mark against one bare write."""
    n, rounds = (300, 3) if quick else (1000, 5)
    n = _scaled(n)
    out: dict[str, Any] = {}
    tag = f"bench{os.getpid()}"
    try:
        import redis

        from gptimg_webhooks.stores.redis import RedisStore

        url = os.environ.get("GPTIMG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        client = redis.Redis.from_url(url)
        client.ping()
        prefix = f"gptimg:{tag}:"
        store = RedisStore(url, prefix=prefix)
        lib, claim_only, bare = [], [], []
        try:
            for r in range(rounds):
                lib.append(_cycle(store, f"r{r}", n))
                batch = [entry(f"c{r}", i) for i in range(n)]
                claim_only.append(_bare_timer(lambda i, b=batch: store.claim(b[i], lease=120.0), n))
                bare.append(
                    _bare_timer(
                        lambda i, r=r: client.set(f"{prefix}bare:{r}:{i}", b"1", nx=True, ex=600), n
                    )
                )
        finally:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
            store.close()
        out["redis"] = _network_figures(lib, claim_only, bare, "SET NX")
        log(
            f"  Redis: claim + done {out['redis']['claim_and_done_us']['median']:.0f} us, claim "
            f"{out['redis']['claim_us']['median']:.0f} us, bare SET NX "
            f"{out['redis']['bare_us']['median']:.0f} us"
        )
    except Exception as exc:  # a missing server or driver: say so, go on
        out["redis"] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
        log(f"  Redis skipped: {out['redis']['skipped']}")
    try:
        import psycopg

        from gptimg_webhooks.stores.postgres import PostgresStore

        url = os.environ.get(
            "GPTIMG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        )
        table = f"gptimg_{tag}"
        store = PostgresStore.from_url(f"{url}?table={table}")
        conn = psycopg.connect(url, autocommit=True)
        conn.execute(f"CREATE TABLE {table}_bare (key text PRIMARY KEY, v text)")
        lib, claim_only, bare = [], [], []
        try:
            for r in range(rounds):
                lib.append(_cycle(store, f"p{r}", n))
                batch = [entry(f"c{r}", i) for i in range(n)]
                claim_only.append(_bare_timer(lambda i, b=batch: store.claim(b[i], lease=120.0), n))
                bare.append(
                    _bare_timer(
                        lambda i, r=r: conn.execute(
                            f"INSERT INTO {table}_bare VALUES (%s, 'x') ON CONFLICT DO NOTHING",
                            (f"{r}:{i}",),
                        ),
                        n,
                    )
                )
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {table}_bare")
            conn.close()
            store.drop_schema()
            store.close()
        out["postgres"] = _network_figures(lib, claim_only, bare, "INSERT ON CONFLICT DO NOTHING")
        log(
            f"  PostgreSQL: claim + done {out['postgres']['claim_and_done_us']['median']:.0f} us,"
            f" claim {out['postgres']['claim_us']['median']:.0f} us, bare INSERT "
            f"{out['postgres']['bare_us']['median']:.0f} us"
        )
    except Exception as exc:
        out["postgres"] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
        log(f"  PostgreSQL skipped: {out['postgres']['skipped']}")
    return out


def _network_figures(
    lib: list[float], claim: list[float], bare: list[float], what: str
) -> dict[str, Any]:
    return {
        "claim_and_done_us": summary(lib),
        "claim_us": summary(claim),
        "bare_us": summary(bare),
        "bare": what,
        "claim_in_round_trips": statistics.median(c / b for c, b in zip(claim, bare, strict=True)),
        "claim_and_done_in_round_trips": statistics.median(
            c / b for c, b in zip(lib, bare, strict=True)
        ),
    }


_MEASURE = """
import gc, hashlib, json, sys, uuid
from gptimg_webhooks._core.ledger import Entry
from gptimg_webhooks.stores.memory import MemoryStore
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
n = int(sys.argv[1])
store = MemoryStore(max_records=n)
gc.collect(); before = rss()
for i in range(n):
    key = hashlib.sha256(b"%d" % i).hexdigest()
    # A fresh event string per record, as parsing makes one.
    event = "generation.succeeded".encode().decode()
    e = Entry(key, str(uuid.uuid4()), event, "gen_%030d" % i, b"x" * 345)
    store.complete(key, store.claim(e, lease=120.0).token)
gc.collect()
print(json.dumps({"records": n, "bytes": rss() - before}))
"""


def memory_bytes(quick: bool, log: Any = print) -> dict[str, Any]:
    """Bytes per done record of the memory ledger (resident memory, a fresh process)."""
    n = _scaled(100_000 if quick else 1_000_000)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(n)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    figures = json.loads(done.stdout)
    figures["bytes_per_record"] = figures["bytes"] / figures["records"]
    log(
        f"  memory ledger: {figures['bytes_per_record']:.0f} bytes per done record at {n:,} records"
    )
    return figures
