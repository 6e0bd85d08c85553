"""A receiver whose handler appends to an effects table with NO unique constraint.

Any double run of a handler shows up as two rows. Configured by environment:

- ``GPTIMG_WEBHOOK_SECRET``, ``GPTIMG_WEBHOOK_STORE``: as for any receiver;
- ``GPTIMG_TEST_EFFECTS``: where effects go: a SQLite file path, or a ``postgresql://``
  URL (table ``GPTIMG_TEST_EFFECTS_TABLE``, default ``effects``, which must exist:
  ``tests/scale/conftest.py`` creates it);
- ``GPTIMG_TEST_MODE``: ``inline`` or ``deferred`` (default);
- ``GPTIMG_TEST_ON_STORE_ERROR``: ``fail_closed`` (default) or ``fail_open``;
- ``GPTIMG_TEST_LEASE``: the receiver's lease in seconds;
- ``GPTIMG_TEST_SLOW``: seconds a ``gen_slow_*`` generation's handler takes (default 1.5).

Behaviours by generation id: ``gen_slow_*`` sleeps first; ``gen_flaky_*`` fails on its
first attempt; ``gen_fail_*`` always fails. Every run first logs a ``start`` row, so a
test can see a run begin even if it never finishes; a finished run logs an ``effect`` row.

With a PostgreSQL ledger and effects in the same database, the effect row is written
through ``delivery.transaction``, so it commits with the done mark.

``hooks`` is the receiver (for ``gptimg-webhooks worker --app``), ``app`` the ASGI app.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sqlite3
import threading
import time
from typing import Any

from gptimg_webhooks import Delivery, Event, Webhooks
from gptimg_webhooks.asgi import WebhookApp
from gptimg_webhooks.stores.sqlite import enable_wal

EFFECTS = os.environ.get("GPTIMG_TEST_EFFECTS", "effects.sqlite3")
TABLE = os.environ.get("GPTIMG_TEST_EFFECTS_TABLE", "effects")
SLOW = float(os.environ.get("GPTIMG_TEST_SLOW", "1.5"))
_local = threading.local()


def _connect() -> Any:
    conn = getattr(_local, "conn", None)
    if conn is not None and _local.pid == os.getpid():
        return conn
    if EFFECTS.startswith("postgresql://"):
        import psycopg

        # The test creates the table: concurrent CREATE IF NOT EXISTS can clash here.
        conn = psycopg.connect(EFFECTS, autocommit=True)
    else:
        conn = sqlite3.connect(EFFECTS, timeout=30, isolation_level=None)
        enable_wal(conn, 30)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (generation_id TEXT, delivery_id TEXT, "
            "attempt INTEGER, pid INTEGER, phase TEXT, at REAL)"
        )
    _local.conn, _local.pid = conn, os.getpid()
    return conn


def _log(phase: str, generation_id: str, delivery: Delivery) -> None:
    sql = f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s, %s)"
    conn = _connect()
    if isinstance(conn, sqlite3.Connection):
        sql = sql.replace("%s", "?")
    row = (generation_id, delivery.id, delivery.attempt, os.getpid(), phase, time.time())
    conn.execute(sql, row)


hooks = Webhooks(
    mode=os.environ.get("GPTIMG_TEST_MODE", "deferred"),  # type: ignore[arg-type]
    on_store_error=os.environ.get("GPTIMG_TEST_ON_STORE_ERROR", "fail_closed"),  # type: ignore[arg-type]
    lease=float(os.environ.get("GPTIMG_TEST_LEASE", "120")),
    include_shared=False,
)


@hooks.on("generation.succeeded", "generation.failed")
async def record(event: Event, delivery: Delivery) -> None:
    generation_id = event.data.generation_id  # type: ignore[attr-defined]
    await asyncio.to_thread(_log, "start", generation_id, delivery)
    if generation_id.startswith("gen_slow_"):
        await asyncio.sleep(SLOW)
    if generation_id.startswith("gen_fail_") or (
        generation_id.startswith("gen_flaky_") and delivery.attempt == 1
    ):
        raise RuntimeError(f"demo failure of {generation_id} (attempt {delivery.attempt})")
    tx = delivery.transaction
    if tx is not None and EFFECTS.startswith("postgresql://"):
        # Effects in the ledger's own database commit with the done mark (exactly once).
        row = (generation_id, delivery.id, delivery.attempt, os.getpid(), "effect", time.time())
        done = tx.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s, %s)", row)
        if inspect.isawaitable(done):  # the async driver's connection
            await done
    else:
        await asyncio.to_thread(_log, "effect", generation_id, delivery)


app = WebhookApp(hooks)
