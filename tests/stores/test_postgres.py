from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from gptimg_webhooks import ConfigurationError, StoreUnavailable
from gptimg_webhooks._core.errors import TransactionAborted
from gptimg_webhooks._core.ledger import ClaimStatus, State, Store
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.stores.postgres import PostgresStore
from tests.stores.conformance import (
    LEASE,
    AsyncTransactionalConformance,
    MultiProcessConformance,
    Reopen,
    ServerTimeConformance,
    StoreConformance,
    TransactionalConformance,
    entry,
    race_claims,
    traceparent,
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

    def break_transaction(self, tx: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(psycopg.errors.NotNullViolation):  # a handler swallows it
            tx.execute(f"INSERT INTO {self.table} (value) VALUES (NULL)")


class TestPostgresStore(
    StoreConformance,
    MultiProcessConformance,
    ServerTimeConformance,
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


class GenericLeasing(PostgresStore):
    """The store without its one-statement lease_due: the base class's due() + apply()."""

    lease_due = Store.lease_due
    alease_due = Store.alease_due


class TestPostgresGenericLeasing(StoreConformance):
    @pytest.fixture
    def reopen(self, postgres_url: str, postgres_table: str) -> Reopen:
        url = with_query(postgres_url, table=postgres_table)
        return lambda: GenericLeasing.from_url(url)


def _server_now(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT extract(epoch FROM statement_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


# Store-side time ----------------------------------------------------------------------


def test_lease_deadlines_follow_the_servers_clock(postgres_url: str, postgres_table: str) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))
    assert store.server_time
    try:
        store.claim(entry(1), lease=LEASE)
        server_now = _server_now(postgres_url)
        rec = store.get(entry(1).key)
        assert rec is not None
        assert rec.updated_at == pytest.approx(server_now, abs=1)
        assert rec.lease_until == pytest.approx(server_now + LEASE, abs=1)
    finally:
        store.close()


def test_a_skewed_client_clock_neither_shortens_nor_steals_a_live_lease(
    postgres_url: str, postgres_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = with_query(postgres_url, table=postgres_table)
    behind, ahead = open_store(url), open_store(url)
    real_time = time.time
    try:
        # A process whose clock is 200 s behind takes a 60 s lease...
        monkeypatch.setattr(time, "time", lambda: real_time() - 200)
        claim = behind.claim(entry(1), lease=LEASE)
        assert claim.status is ClaimStatus.CLAIMED
        # ...and one whose clock is 200 s ahead still sees it live.
        monkeypatch.setattr(time, "time", lambda: real_time() + 200)
        assert ahead.claim(entry(1), lease=LEASE).status is ClaimStatus.IN_PROGRESS
        assert ahead.due(10) == []
        assert ahead.lease_due(lease=LEASE) == []
        monkeypatch.setattr(time, "time", real_time)
        assert behind.complete(entry(1).key, claim.token)
    finally:
        behind.close()
        ahead.close()


# Transactions -------------------------------------------------------------------------


def test_a_handlers_caught_sql_error_is_transaction_aborted_not_store_unavailable(
    postgres_url: str, postgres_table: str
) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))
    effects = Effects(postgres_url, f"{postgres_table}_effects")
    try:
        claim = store.claim(entry(1), lease=LEASE)

        def handlers_then_check() -> None:
            with store.transaction() as tx:
                effects.write(tx, "before the error")
                effects.break_transaction(tx)
                with pytest.raises(TransactionAborted):  # the done mark cannot join it either
                    store.complete(entry(1).key, claim.token)
                store.check_transaction(tx)  # what the receiver does before its done mark

        with pytest.raises(TransactionAborted):
            handlers_then_check()
        assert effects.rows() == []
        assert store.get(entry(1).key).state is State.PROCESSING  # type: ignore[union-attr]
        assert store.complete(entry(1).key, claim.token)  # the pooled connection is clean
    finally:
        store.close()


def test_a_healthy_transaction_passes_the_check(postgres_url: str, postgres_table: str) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))
    effects = Effects(postgres_url, f"{postgres_table}_effects")
    try:
        with store.transaction() as tx:
            effects.write(tx, "fine")
            store.check_transaction(tx)
        assert effects.rows() == ["fine"]
    finally:
        store.close()


def test_handler_sql_error_is_the_handlers_not_the_stores(
    postgres_url: str, postgres_table: str
) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))
    try:
        with pytest.raises(psycopg.errors.UndefinedTable), store.transaction() as tx:
            tx.execute("INSERT INTO no_such_table_here VALUES (1)")
        # The pooled connection came back clean: the store still works.
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.CLAIMED
    finally:
        store.close()


def test_a_failing_commit_is_store_unavailable(postgres_url: str, postgres_table: str) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))

    def handlers_pass_commit_fails() -> None:
        with store.transaction() as tx:
            # Deferred to COMMIT: the body itself raises nothing, the COMMIT does.
            tx.execute(
                "CREATE TEMP TABLE deferred_check (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
            )
            tx.execute("INSERT INTO deferred_check VALUES (1), (1)")

    try:
        with pytest.raises(StoreUnavailable, match="transaction"):
            handlers_pass_commit_fails()
        assert store.get("anything") is None
    finally:
        store.close()


# URL and schema -----------------------------------------------------------------------


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
    [
        "table=Robert');DROP",
        "table=a.b.c",
        "pool_max=0",
        "pool_max=x",
        "pool_timeout=x",
        "pool_timeout=0",
        "pool_timeout=inf",
        "create_schema=maybe",
    ],
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
        with pytest.raises(StoreUnavailable, match="does not exist"):
            store.get("anything")
        store.create_schema()
        assert store.get("anything") is None
    finally:
        store.close()


def test_create_false_runs_no_ddl(postgres_url: str, postgres_table: str) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table), create=False)
    try:
        for call in (
            lambda: store.get("anything"),
            lambda: store.claim(entry(1), lease=LEASE),
            lambda: store.bump("g", 3),
        ):
            with pytest.raises(StoreUnavailable, match="does not exist"):
                call()
    finally:
        store.close()
    assert _tables(postgres_url, f"{postgres_table}%") == []


def test_many_first_users_create_the_schema_once_without_errors(
    postgres_url: str, postgres_table: str
) -> None:
    url = with_query(postgres_url, table=postgres_table)
    barrier, errors = threading.Barrier(6), []

    def first_use() -> None:
        store = open_store(url)
        try:
            barrier.wait(timeout=30)
            store.claim(entry(1), lease=LEASE)
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


def _columns(url: str, table: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            (table,),
        )
        return [r[0] for r in rows]


@pytest.mark.slow
def test_processes_starting_on_an_older_ledger_add_its_new_column_once(
    postgres_url: str, postgres_table: str
) -> None:
    url = with_query(postgres_url, table=postgres_table)
    old = open_store(url)
    claim = old.claim(entry("old"), lease=LEASE)
    old.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as earlier releases left it
        conn.execute(f"ALTER TABLE {postgres_table} DROP COLUMN traceparent")
    assert "traceparent" not in _columns(postgres_url, postgres_table)
    # Each process adds missing columns on first use: they race for it.
    outcomes = race_claims(lambda: open_store(url), keys=3, processes=True)
    for key, statuses in outcomes.items():
        assert statuses.count(ClaimStatus.CLAIMED) == 1, (key, statuses)
    assert _columns(postgres_url, postgres_table).count("traceparent") == 1
    store = open_store(url)
    try:
        assert store.get("old").traceparent is None  # type: ignore[union-attr]
        assert store.complete("old", claim.token)
        stamped = replace(entry(1), traceparent=traceparent())
        store.enqueue(stamped)
        assert store.get(stamped.key).traceparent == stamped.traceparent  # type: ignore[union-attr]
    finally:
        store.close()


def test_create_schema_adds_the_new_column_to_an_older_ledger(
    postgres_url: str, postgres_table: str
) -> None:
    url = with_query(postgres_url, table=postgres_table, create_schema="false")
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    try:
        store.create_schema()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {postgres_table} DROP COLUMN traceparent")
        with pytest.raises(StoreUnavailable, match="traceparent"):
            store.get("k")  # what a receiver with create_schema=false meets before it
        store.create_schema()
        assert store.get("k") is None
        assert _columns(postgres_url, postgres_table).count("traceparent") == 1
    finally:
        store.close()


def test_an_upgrade_behind_a_long_transaction_gives_up_soon_and_is_tried_again(
    postgres_url: str, postgres_table: str
) -> None:
    url = with_query(postgres_url, table=postgres_table)
    old = open_store(url)
    old.get("create the schema")
    old.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {postgres_table} DROP COLUMN traceparent")
    # A reader's open transaction holds a lock ALTER TABLE must wait for.
    holder = psycopg.connect(postgres_url)
    holder.execute(f"SELECT count(*) FROM {postgres_table}")
    store = open_store(url)
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="lock timeout"):
            store.get("k")
        assert time.monotonic() - began < 10
        holder.rollback()
        assert store.get("k") is None  # the next use adds the column
        assert _columns(postgres_url, postgres_table).count("traceparent") == 1
    finally:
        holder.close()
        store.close()


def test_schema_qualified_table(postgres_url: str, postgres_table: str) -> None:
    schema = f"{postgres_table}_s"
    store = open_store(with_query(postgres_url, table=f"{schema}.ledger"))
    try:
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.CLAIMED
        assert store.bump("g", 1)
        assert _tables(postgres_url, "ledger%") == ["ledger", "ledger_counters"]
    finally:
        store.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_prune_goes_on_past_one_batch(postgres_url: str, postgres_table: str) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))
    try:
        store.get("create the schema")
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {postgres_table} (key, state, delivery_id, created_at, updated_at) "
                "SELECT 'old-' || n, 'done', 'd', 1, 1 FROM generate_series(1, 10003) AS n"
            )
        assert store.prune(60) == 10003  # two full batches of 5000 and the rest
        assert store.records() == []
    finally:
        store.close()


def test_long_counter_names_are_kept_apart(postgres_url: str, postgres_table: str) -> None:
    store = open_store(with_query(postgres_url, table=postgres_table))
    long_a, long_b = "a" * 199 + "1", "a" * 199 + "2"
    try:
        assert not store.bump(long_a, 2)
        assert not store.bump(long_b, 2)
        assert store.bump(long_a, 2)
    finally:
        store.close()


# Outages ------------------------------------------------------------------------------


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
