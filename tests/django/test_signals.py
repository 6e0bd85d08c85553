"""Django signals for received, processed and failed deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from gptimg_webhooks import GenerationFailed, GenerationSucceeded, Webhooks
from gptimg_webhooks.django.signals import delivery_failed, delivery_processed, delivery_received
from tests.django.conftest import delivery, in_other_thread
from tests.django.testapp.models import Note

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def heard() -> Iterator[list[tuple[str, Any]]]:
    log: list[tuple[str, Any]] = []

    def listen(name: str) -> Any:
        def receiver(sender: Any, **kw: Any) -> None:
            log.append((name, sender))
            if name == "processed":  # on_commit: the done mark is visible elsewhere
                log.append(("committed", in_other_thread("default", lambda: Note.objects.count())))

        return receiver

    receivers = {
        s: listen(n)
        for s, n in [
            (delivery_received, "received"),
            (delivery_processed, "processed"),
            (delivery_failed, "failed"),
        ]
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    yield log
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


def test_signals_surround_a_successful_delivery(hooks: Webhooks, heard: list[Any]) -> None:
    hooks.on("generation.succeeded")(lambda e: Note.objects.create(value="x"))
    body, headers = delivery()
    response = Client().post(
        "/hooks/gptimg", body, content_type="application/json", headers=headers
    )
    assert response.status_code == 200
    assert heard == [
        ("received", GenerationSucceeded),
        ("processed", GenerationSucceeded),
        ("committed", 1),
    ]


def test_failed_signal_carries_the_exception_and_processed_is_not_sent(
    hooks: Webhooks, heard: list[Any]
) -> None:
    errors: list[BaseException] = []

    def boom(event: Any) -> None:
        raise ValueError("nope")

    hooks.on("generation.failed")(boom)
    delivery_failed.connect(
        lambda sender, exception, **kw: errors.append(exception), weak=False, dispatch_uid="t"
    )
    try:
        body, headers = delivery(event="generation.failed")
        headers["X-Gptimg-Event"] = "generation.failed"
        response = Client().post(
            "/hooks/gptimg", body, content_type="application/json", headers=headers
        )
    finally:
        delivery_failed.disconnect(dispatch_uid="t")
    assert response.status_code == 500
    assert heard == [("received", GenerationFailed), ("failed", GenerationFailed)]
    assert [str(e) for e in errors] == ["nope"]


def test_a_signal_receiver_alone_handles_deliveries(hooks: Webhooks, heard: list[Any]) -> None:
    body, headers = delivery()
    response = Client().post(
        "/hooks/gptimg", body, content_type="application/json", headers=headers
    )
    assert response.json()["status"] == "processed"
    assert [name for name, _ in heard] == ["received", "processed", "committed"]
