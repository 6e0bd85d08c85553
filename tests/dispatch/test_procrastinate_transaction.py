"""Procrastinate on the PostgreSQL ledger: the job is deferred in the ledger's transaction.

PostgreSQL stamps every row with the id of the transaction that inserted it (``xmin``):
the record and its job carrying the same one is the proof they committed together, so
no pointer can be lost between them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from gptimg_webhooks import Webhooks
from gptimg_webhooks.stores.postgres import PostgresStore
from gptimg_webhooks.testing import events, random_secret, signed
from tests.support.services import ensure_postgres, unavailable

pytestmark = pytest.mark.postgres

SECRET = random_secret()


@pytest.fixture
def database() -> Iterator[str]:
    try:
        import procrastinate  # noqa: F401
    except ImportError as exc:
        unavailable(f"procrastinate is not installed ({exc})")
    dsn = ensure_postgres()
    import psycopg

    name = f"gptimg_t_ptx_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _xmins(dsn: str, table: str, key: str) -> tuple[str, list[str]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        record = conn.execute(f"SELECT xmin::text FROM {table} WHERE key = %s", (key,)).fetchone()
        jobs = conn.execute(
            "SELECT xmin::text FROM procrastinate_jobs WHERE args->>'key' = %s", (key,)
        ).fetchall()
    assert record is not None
    return record[0], [row[0] for row in jobs]


@pytest.mark.parametrize("path", ["sync", "async"])
def test_the_job_commits_in_the_same_transaction_as_the_record(database: str, path: str) -> None:
    import procrastinate

    from gptimg_webhooks.dispatch.procrastinate import ProcrastinateDispatcher

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=database))
    with app.open():
        app.schema_manager.apply_schema()
        store = PostgresStore(database, table="t_ledger")
        hooks = Webhooks(
            SECRET,
            store=store,
            mode="deferred",
            dispatcher=ProcrastinateDispatcher(app, lambda: hooks),
            include_shared=False,
        )
        delivery = signed(events.succeeded(), SECRET)
        try:
            for _ in range(2):  # the second copy is a duplicate: no second job
                if path == "sync":
                    answer = hooks.handle("POST", delivery.headers, delivery.body)
                else:
                    answer = asyncio.run(
                        hooks.handle_async("POST", delivery.headers, delivery.body)
                    )
                assert answer.status == 202 and answer.json["status"] == "queued"
            key = store.records()[0].key
            record_xmin, job_xmins = _xmins(database, "t_ledger", key)
            assert job_xmins == [record_xmin]
        finally:
            hooks.close()
