"""The ORM ledger's promise: a handler's writes and the done mark commit together."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from django.test import AsyncClient, Client

from gptimg_webhooks import Delivery, GenerationSucceeded, Webhooks
from gptimg_webhooks.django.models import Delivery as Record
from tests.django.conftest import delivery, in_other_thread
from tests.django.testapp.models import Note

pytestmark = pytest.mark.django_db(transaction=True)


def writes_then_raises_once(hooks: Webhooks, alias: str) -> list[int]:
    """Register a handler that writes a row, then raises on its first attempt only."""
    attempts: list[int] = []

    @hooks.on("generation.succeeded")
    def handler(event: GenerationSucceeded, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        Note.objects.using(alias).create(value=f"{event.data.generation_id}#{delivery.attempt}")
        if delivery.attempt == 1:
            raise RuntimeError("handler broke after its write")

    return attempts


def notes(alias: str) -> list[str]:
    return in_other_thread(
        alias, lambda: list(Note.objects.using(alias).values_list("value", flat=True))
    )


def test_handler_that_raises_rolls_back_its_write_and_the_retry_succeeds_once(
    use_store: str, hooks: Webhooks
) -> None:
    alias = use_store
    attempts = writes_then_raises_once(hooks, alias)
    body, headers = delivery("gen_tx_1")
    client = Client()

    first = client.post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    assert first.status_code == 500
    assert notes(alias) == []  # the handler's row rolled back with it
    record = Record.objects.using(alias).get()
    assert (record.state, record.attempts) == ("failed", 1)
    assert record.error is not None
    assert "handler broke" in record.error

    retry = client.post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    assert retry.status_code == 200
    again = client.post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    assert again.json()["status"] == "duplicate"
    assert attempts == [1, 2]
    assert notes(alias) == ["gen_tx_1#2"]
    assert Record.objects.using(alias).get().state == "done"


def test_the_async_view_keeps_the_same_guarantee(use_store: str, hooks: Webhooks) -> None:
    alias = use_store
    attempts = writes_then_raises_once(hooks, alias)
    body, headers = delivery("gen_tx_async")

    async def post() -> int:
        response = await AsyncClient().post(
            "/hooks/gptimg", body, content_type="application/json", headers=headers
        )
        return response.status_code

    assert asyncio.run(post()) == 500
    assert notes(alias) == []
    assert asyncio.run(post()) == 200
    assert attempts == [1, 2]
    assert notes(alias) == ["gen_tx_async#2"]


def test_handler_gets_the_atomic_block_as_its_transaction(use_store: str, hooks: Webhooks) -> None:
    seen: list[object] = []

    @hooks.on("generation.succeeded")
    def handler(event: GenerationSucceeded, delivery: Delivery) -> None:
        from django.db import connections

        seen.append((delivery.transaction, connections[use_store].in_atomic_block))

    body, headers = delivery()
    response = Client().post(
        "/hooks/gptimg", body, content_type="application/json", headers=headers
    )
    assert response.status_code == 200
    (transaction, in_atomic), *_ = seen
    assert transaction is not None
    assert in_atomic


def test_async_handler_writes_join_the_ledger_transaction_through_the_view(
    use_store: str, hooks: Webhooks
) -> None:
    alias = use_store
    attempts: list[int] = []

    @hooks.on("generation.succeeded")
    async def handler(event: GenerationSucceeded, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        value = f"{event.data.generation_id}#{delivery.attempt}"
        await Note.objects.using(alias).acreate(value=value)
        if delivery.attempt == 1:
            raise RuntimeError("async handler broke after its write")

    body, headers = delivery("gen_tx_async")
    client = Client()
    first = client.post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    assert first.status_code == 500
    assert notes(alias) == []  # the async write rolled back with the ledger's transaction
    retry = client.post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    assert retry.status_code == 200
    assert attempts == [1, 2]
    assert notes(alias) == ["gen_tx_async#2"]


def test_handler_that_catches_its_own_orm_error_is_a_handler_failure(
    use_store: str, hooks: Webhooks
) -> None:
    from django.db import IntegrityError

    alias = use_store

    @hooks.on("generation.succeeded")
    def handler(event: GenerationSucceeded, delivery: Delivery) -> None:
        if delivery.attempt == 1:
            # NOT NULL: the database refuses; swallowed, the transaction is unusable all the same.
            with contextlib.suppress(IntegrityError):
                Note.objects.using(alias).create(value=None)
        else:
            Note.objects.using(alias).create(value="ok")

    body, headers = delivery("gen_tx_caught")
    client = Client()
    first = client.post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    assert (first.status_code, first.json()["error"]) == (500, "handler_failed")
    record = Record.objects.using(alias).get()
    assert record.state == "failed"
    assert "TransactionAborted" in (record.error or "")
    retry = client.post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    assert retry.status_code == 200
    assert notes(alias) == ["ok"]
