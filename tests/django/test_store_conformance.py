"""The shared ledger conformance suite, run against the Django ORM store on both databases."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, connections

from gptimg_webhooks import StoreUnavailable
from gptimg_webhooks._core.errors import TransactionAborted
from gptimg_webhooks.django.store import DjangoStore
from tests.django.conftest import in_other_thread
from tests.django.testapp.models import Note
from tests.stores.conformance import (
    LEASE,
    MultiProcessConformance,
    Reopen,
    StoreConformance,
    TransactionalConformance,
    entry,
)
from tests.support.services import ensure_postgres


class NoteEffects:
    """A handler's own table, written through the ORM inside the store's transaction."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def write(self, tx: Any, value: str) -> None:
        Note.objects.using(self.alias).create(value=value)

    async def awrite(self, tx: Any, value: str) -> None:
        await Note.objects.using(self.alias).acreate(value=value)

    def rows(self) -> list[str]:
        return in_other_thread(
            self.alias,
            lambda: list(
                Note.objects.using(self.alias).order_by("id").values_list("value", flat=True)
            ),
        )

    def break_transaction(self, tx: Any) -> None:
        with suppress(IntegrityError):  # a handler that swallowed its own SQL error
            Note.objects.using(self.alias).create(value=None)  # NOT NULL


class _DjangoStoreConformance(StoreConformance, MultiProcessConformance, TransactionalConformance):
    alias = "default"

    @pytest.fixture
    def reopen(self) -> Reopen:
        return lambda: DjangoStore(self.alias)

    @pytest.fixture
    def effects(self) -> NoteEffects:
        return NoteEffects(self.alias)


@pytest.mark.django_db(transaction=True)
class TestDjangoStoreOnSQLite(_DjangoStoreConformance):
    alias = "default"
    single_writer = True

    def test_the_hosts_clock_is_the_stores(self, store: DjangoStore) -> None:
        assert store.server_time is False


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=["default", "pg"])
class TestDjangoStoreOnPostgres(_DjangoStoreConformance):
    alias = "pg"

    @pytest.fixture(autouse=True)
    def _postgres(self) -> None:
        ensure_postgres()

    def test_the_servers_clock_is_the_stores(self, store: DjangoStore) -> None:
        assert store.server_time is True

    def test_a_caught_raw_sql_error_is_the_handlers_failure(
        self, store: DjangoStore, effects: NoteEffects
    ) -> None:
        # A raw cursor error leaves Django's flag alone; the driver still says INERROR.
        cursor = connections[self.alias].cursor
        claim = store.claim(entry(1), lease=LEASE)

        def handler_then_check() -> None:
            with store.transaction() as tx:
                effects.write(tx, "lost")
                with suppress(DatabaseError), cursor() as raw:
                    raw.execute("SELECT 1 / 0")
                assert not connections[self.alias].needs_rollback
                store.check_transaction(tx)

        with pytest.raises(TransactionAborted):
            handler_then_check()
        assert effects.rows() == []

        def handler_then_complete() -> None:
            with store.transaction():
                with suppress(DatabaseError), cursor() as raw:
                    raw.execute("SELECT 1 / 0")
                store.complete(entry(1).key, claim.token)

        # The store's own statements after such a handler blame it too, never the store.
        with pytest.raises(TransactionAborted) as caught:
            handler_then_complete()
        assert not isinstance(caught.value, StoreUnavailable)
        assert store.complete(entry(1).key, claim.token)
