from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from gptimg_webhooks import ConfigurationError
from gptimg_webhooks._core.ledger import ClaimStatus, Store
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.stores.postgres import PostgresStore
from tests.stores.conformance import (
    LEASE,
    T0,
    AsyncTransactionalConformance,
    MultiProcessConformance,
    Reopen,
    StoreConformance,
    TransactionalConformance,
    entry,
)
from tests.stores.conftest import with_query
from tests.stores.outage import async_outcomes, outage_and_recovery, sync_outcomes
from tests.support.servers import free_port

pytestmark = pytest.mark.postgres


class Effects:
    """A handler's own table with no unique constraint: a double write would show."""

    def __init__(self, url: str, table: str) -> None:
        self.url, self.table = url, table
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, value text NOT NULL)")

    def write(self, tx: psycopg.Connection[Any], value: str) -> None:
        tx.execute(f"INSERT INTO {self.table} (value) VALUES (%s)", (value,))

    async def awrite(self, tx: psycopg.AsyncConnection[Any], value: str) -> None:
        await tx.execute(f"INSERT INTO {self.table} (value) VALUES (%s)", (value,))

    def rows(self) -> list[str]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return [r[0] for r in conn.execute(f"SELECT value FROM {self.table} ORDER BY id")]


class TestPostgresStore(
    StoreConformance,
    MultiProcessConformance,
    TransactionalConformance,
    AsyncTransactionalConformance,
):
    @pytest.fixture
    def reopen(self, postgres_url: str, postgres_table: str) -> Reopen:
        url = with_query(postgres_url, table=postgres_table)
        return lambda: open_store(url)

    @pytest.fixture
    def effects(self, postgres_url: str, postgres_table: str) -> Effects:
        return Effects(postgres_url, f"{postgres_table}_effects")


def test_postgres_url_options_are_the_stores_and_the_rest_libpqs(postgres_table: str) -> None:
    store = open_store(
        f"postgres://postgres@127.0.0.1:5432/test?table={postgres_table}"
        "&pool_max=3&pool_timeout=0.5&application_name=gptimg-test"
    )
    assert isinstance(store, PostgresStore)
    assert (store.table, store.pool_max, store.pool_timeout) == (postgres_table, 3, 0.5)
    assert "application_name=gptimg-test" in store._conninfo
    assert "connect_timeout=2" in store._conninfo
    assert "table" not in store._conninfo


@pytest.mark.parametrize(
    "query",
    ["table=Robert');DROP", "table=a.b.c", "pool_max=0", "pool_timeout=x", "create_schema=maybe"],
)
def test_bad_postgres_options_fail_at_start_up(query: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(f"postgresql://postgres@127.0.0.1:5432/test?{query}")


def _tables(url: str, like: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE %s "
            "ORDER BY table_name",
            (like,),
        )
        return [r[0] for r in rows]


def test_schema_is_created_on_first_use(postgres_url: str, postgres_table: str) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))
    try:
        assert _tables(postgres_url, f"{postgres_table}%") == []
        assert store.get("anything") is None
        assert _tables(postgres_url, f"{postgres_table}%") == [
            postgres_table,
            f"{postgres_table}_counters",
        ]
    finally:
        store.close()


def test_schema_is_left_alone_without_create_schema(postgres_url: str, postgres_table: str) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table, create_schema="false"))
    assert isinstance(store, PostgresStore)
    try:
        with pytest.raises(Exception, match="does not exist"):
            store.get("anything")
        store.create_schema()
        assert store.get("anything") is None
    finally:
        store.close()


def test_many_first_users_create_the_schema_once_without_errors(
    postgres_url: str, postgres_table: str
) -> None:
    url = with_query(postgres_url, table=postgres_table)
    barrier, errors = threading.Barrier(6), []

    def first_use() -> None:
        store = open_store(url)
        try:
            barrier.wait(timeout=30)
            store.claim(entry(1), now=T0, lease=LEASE)
        except Exception as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=first_use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


def test_schema_qualified_table(postgres_url: str, postgres_table: str) -> None:
    schema = f"{postgres_table}_s"
    store = open_store(with_query(postgres_url, table=f"{schema}.ledger"))
    try:
        assert store.claim(entry(1), now=T0, lease=LEASE).status is ClaimStatus.CLAIMED
        assert _tables(postgres_url, "ledger%") == ["ledger", "ledger_counters"]
    finally:
        store.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_handler_sql_error_is_the_handlers_not_the_stores(
    postgres_url: str, postgres_table: str
) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))
    try:
        with pytest.raises(psycopg.errors.UndefinedTable), store.transaction() as tx:
            tx.execute("INSERT INTO no_such_table_here VALUES (1)")
        # The pooled connection came back clean: the store still works.
        assert store.claim(entry(1), now=T0, lease=LEASE).status is ClaimStatus.CLAIMED
    finally:
        store.close()


@pytest.fixture
def dead_postgres() -> Iterator[Store]:
    """A PostgreSQL store pointed at a port nothing listens on (default timeouts)."""
    store = open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    yield store
    store.close()


def test_unreachable_postgres_raises_store_unavailable_fast(dead_postgres: Store) -> None:
    outcomes = sync_outcomes(dead_postgres)
    assert {name: kind for name, (kind, _) in outcomes.items()} == dict.fromkeys(
        outcomes, "StoreUnavailable"
    )
    assert max(seconds for _, seconds in outcomes.values()) < 2.0


def test_unreachable_postgres_raises_store_unavailable_fast_async(dead_postgres: Store) -> None:
    outcomes = async_outcomes(dead_postgres)
    assert {name: kind for name, (kind, _) in outcomes.items()} == dict.fromkeys(
        outcomes, "StoreUnavailable"
    )
    assert max(seconds for _, seconds in outcomes.values()) < 2.0


# Through the receiver: a handler's writes commit with the done mark -------------------


@pytest.fixture
def receiver_store(postgres_url: str, postgres_table: str) -> Iterator[Store]:
    store = open_store(with_query(postgres_url, table=postgres_table))
    yield store
    store.close()


def test_receiver_commits_a_handlers_write_once_and_rolls_back_a_failed_run(
    receiver_store: Store, postgres_url: str, postgres_table: str
) -> None:
    from gptimg_webhooks import Delivery, GenerationSucceeded, Webhooks, sign
    from tests.support.contract import payload

    effects = Effects(postgres_url, f"{postgres_table}_effects")
    hooks = Webhooks("whsec_test", store=receiver_store, include_shared=False)
    runs: list[int] = []

    @hooks.on("generation.succeeded")
    def record(event: GenerationSucceeded, delivery: Delivery) -> None:
        runs.append(delivery.attempt)
        effects.write(delivery.transaction, event.data.generation_id)
        if delivery.attempt == 1:
            raise RuntimeError("first attempt fails after writing")

    body = payload("gen_tx_sync")
    headers = {
        "X-Gptimg-Signature": sign(body, "whsec_test"),
        "X-Gptimg-Delivery": "6f1c2d3e-4b5a-4c6d-8e7f-000000000001",
        "X-Gptimg-Event": "generation.succeeded",
    }
    assert hooks.handle("POST", headers, body).status == 500
    assert effects.rows() == []  # rolled back with the failed run
    assert hooks.handle("POST", headers, body).status == 200
    assert hooks.handle("POST", headers, body).json["status"] == "duplicate"
    assert (runs, effects.rows()) == ([1, 2], ["gen_tx_sync"])


def test_async_receiver_commits_a_handlers_write_once_and_rolls_back_a_failed_run(
    receiver_store: Store, postgres_url: str, postgres_table: str
) -> None:
    import asyncio

    from gptimg_webhooks import Delivery, GenerationSucceeded, Webhooks, sign
    from tests.support.contract import payload

    effects = Effects(postgres_url, f"{postgres_table}_effects")
    hooks = Webhooks("whsec_test", store=receiver_store, include_shared=False)
    runs: list[int] = []

    @hooks.on("generation.succeeded")
    async def record(event: GenerationSucceeded, delivery: Delivery) -> None:
        runs.append(delivery.attempt)
        await effects.awrite(delivery.transaction, event.data.generation_id)
        if delivery.attempt == 1:
            raise RuntimeError("first attempt fails after writing")

    body = payload("gen_tx_async")
    headers = {
        "X-Gptimg-Signature": sign(body, "whsec_test"),
        "X-Gptimg-Delivery": "6f1c2d3e-4b5a-4c6d-8e7f-000000000002",
        "X-Gptimg-Event": "generation.succeeded",
    }

    async def deliver_three_times() -> list[int]:
        try:
            return [(await hooks.handle_async("POST", headers, body)).status for _ in range(3)]
        finally:
            await receiver_store.aclose()

    assert asyncio.run(deliver_three_times()) == [500, 200, 200]
    assert (runs, effects.rows()) == ([1, 2], ["gen_tx_async"])


def test_postgres_store_fails_fast_in_an_outage_and_recovers_by_itself(
    postgres_url: str, postgres_table: str
) -> None:
    down, recovered = outage_and_recovery(
        lambda port: open_store(
            f"postgresql://postgres@127.0.0.1:{port}/test?table={postgres_table}"
        ),
        5432,
    )
    assert down < 2.0
    assert recovered < 5.0


def test_async_receiver_gives_a_sync_handler_a_sync_connection_that_commits(
    receiver_store: Store, postgres_url: str, postgres_table: str
) -> None:
    import asyncio

    from gptimg_webhooks import Delivery, GenerationSucceeded, Webhooks, sign
    from tests.support.contract import payload

    effects = Effects(postgres_url, f"{postgres_table}_effects")
    hooks = Webhooks("whsec_test", store=receiver_store, include_shared=False)

    @hooks.on("generation.succeeded")
    def record(event: GenerationSucceeded, delivery: Delivery) -> None:
        assert isinstance(delivery.transaction, psycopg.Connection)
        effects.write(delivery.transaction, event.data.generation_id)

    body = payload("gen_tx_sync_under_asgi")
    headers = {
        "X-Gptimg-Signature": sign(body, "whsec_test"),
        "X-Gptimg-Delivery": "6f1c2d3e-4b5a-4c6d-8e7f-000000000003",
        "X-Gptimg-Event": "generation.succeeded",
    }

    async def deliver_twice() -> list[int]:
        try:
            return [(await hooks.handle_async("POST", headers, body)).status for _ in range(2)]
        finally:
            await receiver_store.aclose()

    assert asyncio.run(deliver_twice()) == [200, 200]
    assert effects.rows() == ["gen_tx_sync_under_asgi"]
