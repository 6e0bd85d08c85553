"""Celery on the Django ledger: the pointer is sent when the transaction commits."""

from __future__ import annotations

import pytest

from gptimg_webhooks import Webhooks
from gptimg_webhooks.testing import events, random_secret, signed

celery = pytest.importorskip("celery")

SECRET = random_secret()


@pytest.mark.django_db(transaction=True)
def test_a_pointer_sent_inside_a_transaction_waits_for_its_commit() -> None:
    from django.db import transaction

    from gptimg_webhooks.dispatch.celery import CeleryDispatcher

    app = celery.Celery("gptimg_on_commit", broker="memory://")
    app.conf.task_always_eager = True
    dispatcher = CeleryDispatcher(app, lambda: hooks)
    hooks = Webhooks(
        SECRET, store="django://", mode="deferred", dispatcher=dispatcher, include_shared=False
    )
    try:
        seen: list[str] = []
        hooks.on("generation.succeeded")(lambda event: seen.append(event.data.generation_id))
        hooks.dispatcher = None  # record first, without a pointer
        delivery = signed(events.succeeded(), SECRET)
        assert hooks.handle("POST", delivery.headers, delivery.body).json["status"] == "queued"
        hooks.dispatcher = dispatcher
        key = hooks.store.records()[0].key

        with transaction.atomic():
            dispatcher.dispatch(key)
            assert seen == []  # not sent while the transaction is open
        assert seen == [delivery.sample.generation_id]  # type: ignore[union-attr]
    finally:
        hooks.close()  # the Celery app outlives the test and holds the receiver
