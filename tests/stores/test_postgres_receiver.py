"""PostgreSQL through the receiver: a handler's writes commit with the done mark.

These drive ``Webhooks`` end to end, so they follow the receiver's port to the ledger v2
API; the store's own tests are in ``test_postgres.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from gptimg_webhooks._core.ledger import Store
from gptimg_webhooks.stores import open_store
from tests.stores.conftest import with_query
from tests.stores.test_postgres import Effects

pytestmark = pytest.mark.postgres


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
