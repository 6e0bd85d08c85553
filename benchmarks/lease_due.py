"""Compare PostgreSQL's one-statement ``lease_due`` with the generic path. Figures only.

The generic path (``Store.lease_due``) lists due keys, then compare-and-sets each one;
``PostgresStore.lease_due`` leases a batch in one ``FOR UPDATE SKIP LOCKED`` statement.
Both run on a fresh table of the local server, alone and as 4 runner threads.

    .venv/bin/python benchmarks/lease_due.py [N] [postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gptimg_webhooks._core.ledger import Entry, Record, Store
from gptimg_webhooks.stores.postgres import PostgresStore

BATCH = 10
Lease = Callable[[PostgresStore], list[tuple[Record, object]]]


def generic(store: PostgresStore) -> list[tuple[Record, object]]:
    return list(Store.lease_due(store, lease=60.0, limit=BATCH))


def one_statement(store: PostgresStore) -> list[tuple[Record, object]]:
    return list(store.lease_due(lease=60.0, limit=BATCH))


def run(url: str, n: int, lease: Lease, runners: int) -> tuple[float, int]:
    table = f"gptimg_bench_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(url, table=table)
    try:
        for i in range(n):
            store.enqueue(Entry(f"k{i}", f"d{i}", "generation.succeeded", f"g{i}", b"{}"))

        def drain() -> int:
            got = 0
            for _ in range(n):  # bounded: at most one empty batch per record
                batch = lease(store)
                if not batch and not store.due(1):
                    break
                got += len(batch)
            return got

        start = time.perf_counter()
        with ThreadPoolExecutor(runners) as pool:
            leased = sum(f.result() for f in [pool.submit(drain) for _ in range(runners)])
        return time.perf_counter() - start, leased
    finally:
        store.drop_schema()
        store.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    url = sys.argv[2] if len(sys.argv) > 2 else "postgresql://postgres@127.0.0.1:5432/test"
    print(f"leasing {n} records in batches of {BATCH}")
    for runners in (1, 4):
        for name, lease in (
            ("generic (due + apply per key)", generic),
            ("one statement", one_statement),
        ):
            seconds, leased = run(url, n, lease, runners)
            print(
                f"  {runners} runner(s), {name:<30} {leased / seconds:>8.0f} records/s"
                f"  ({leased} leased in {seconds:.2f} s)"
            )


if __name__ == "__main__":
    main()
