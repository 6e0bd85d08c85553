"""The ORM ledger's own promises beyond the shared suite: transactions handlers can trust."""

from __future__ import annotations

from contextlib import suppress

import pytest
from django.db import IntegrityError, connections

from gptimg_webhooks import StoreUnavailable
from gptimg_webhooks._core.errors import ConfigurationError, TransactionAborted
from gptimg_webhooks._core.ledger import State
from gptimg_webhooks.django import store as store_module
from gptimg_webhooks.django.store import DjangoStore
from gptimg_webhooks.stores import open_store
from tests.django.conftest import in_other_thread
from tests.django.testapp.models import Note
from tests.stores.conformance import LEASE, entry

pytestmark = pytest.mark.django_db(transaction=True)


def notes(alias: str) -> list[str]:
    return in_other_thread(
        alias,
        lambda: list(Note.objects.using(alias).order_by("id").values_list("value", flat=True)),
    )


def swallow_an_sql_error(alias: str) -> None:
    """Do what a handler that catches its own failed INSERT does."""
    with suppress(IntegrityError):
        Note.objects.using(alias).create(value=None)  # NOT NULL


def test_an_async_handlers_orm_writes_join_the_ledger_transaction(alias: str) -> None:
    store = DjangoStore(alias)
    e = entry("async-joins")

    async def handler(attempt: int) -> None:
        await Note.objects.using(alias).acreate(value=f"attempt {attempt}")
        if attempt == 1:
            raise RuntimeError("handler broke after its write")

    def run(attempt: int, token: str) -> None:
        with store.transaction():
            store.run_async(handler(attempt))
            assert notes(alias) == []  # not committed on another connection
            assert store.complete(e.key, token)

    first = store.claim(e, lease=LEASE)
    with pytest.raises(RuntimeError, match="broke after its write"):
        run(first.attempt, first.token)
    assert notes(alias) == []  # the write rolled back with the done mark
    assert store.fail(e.key, first.token, "RuntimeError")

    second = store.claim(e, lease=LEASE)
    assert second.attempt == 2
    run(second.attempt, second.token)
    assert notes(alias) == ["attempt 2"]
    assert store.get(e.key).state is State.DONE  # type: ignore[union-attr]
    store.close()


def test_a_caught_orm_error_is_the_handlers_failure_and_rolls_back(alias: str) -> None:
    store = DjangoStore(alias)
    claim = store.claim(entry(1), lease=LEASE)

    def handler_then_check() -> None:
        with store.transaction() as tx:
            Note.objects.using(alias).create(value="lost")
            swallow_an_sql_error(alias)
            store.check_transaction(tx)

    with pytest.raises(TransactionAborted):
        handler_then_check()
    assert notes(alias) == []
    assert store.get(entry(1).key).state is State.PROCESSING  # type: ignore[union-attr]
    assert store.fail(entry(1).key, claim.token, "TransactionAborted")
    store.close()


def test_the_stores_statements_after_a_caught_error_blame_the_handler(alias: str) -> None:
    store = DjangoStore(alias)
    claim = store.claim(entry(1), lease=LEASE)

    def handler_then_complete() -> None:
        with store.transaction():
            swallow_an_sql_error(alias)
            store.complete(entry(1).key, claim.token)

    with pytest.raises(TransactionAborted) as caught:
        handler_then_complete()
    assert not isinstance(caught.value, StoreUnavailable)
    assert store.get(entry(1).key).state is State.PROCESSING  # type: ignore[union-attr]
    store.close()


def test_a_broken_transaction_left_without_raising_is_rolled_back_as_aborted(
    alias: str,
) -> None:
    store = DjangoStore(alias)

    def handler() -> None:
        with store.transaction():
            Note.objects.using(alias).create(value="lost")
            swallow_an_sql_error(alias)

    with pytest.raises(TransactionAborted):
        handler()
    assert notes(alias) == []
    store.close()


def test_a_handlers_own_database_error_propagates_unchanged(alias: str) -> None:
    store = DjangoStore(alias)
    with pytest.raises(IntegrityError), store.transaction():
        Note.objects.using(alias).create(value=None)
    assert not connections[alias].in_atomic_block
    assert notes(alias) == []
    store.close()


def test_counter_names_of_two_hundred_characters_are_kept_apart(alias: str) -> None:
    store = DjangoStore(alias)
    one, two = "a" * 199 + "1", "a" * 199 + "2"
    assert not store.bump(one, 2)
    assert not store.bump(two, 2)
    assert store.bump(one, 2)
    store.close()


def test_prune_deletes_in_batches(alias: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_PRUNE_BATCH", 3)
    store = DjangoStore(alias)
    for n in range(8):
        claim = store.claim(entry(n), lease=LEASE)
        store.complete(entry(n).key, claim.token)
    store.claim(entry(9), lease=LEASE)  # unfinished: kept
    assert store.prune(0) == 8
    assert [r.key for r in store.records()] == [entry(9).key]
    store.close()


def test_a_django_url_names_a_configured_alias_only() -> None:
    assert open_store("django://").alias == "default"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="no database 'nope'"):
        open_store("django://nope")
    with pytest.raises(ConfigurationError, match="alias"):
        open_store("django://default/extra")
