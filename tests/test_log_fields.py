"""The receiver's log lines carry structured ``extra=`` fields; rejections never log ERROR."""

from __future__ import annotations

import logging

import pytest

from gptimg_webhooks import GenerationSucceeded, Webhooks
from gptimg_webhooks.testing import events, random_secret, signed

SECRET = random_secret()


def test_duplicates_and_rejections_log_fields_below_error(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    delivery = signed(events.succeeded(), SECRET)
    hooks.handle("POST", delivery.headers, delivery.body)
    with caplog.at_level(logging.INFO, logger="gptimg_webhooks"):
        hooks.handle("POST", delivery.headers, delivery.body)
        forged = signed(events.succeeded(), SECRET, wrong_secret=True)
        hooks.handle("POST", forged.headers, forged.body)
    duplicate = next(r for r in caplog.records if getattr(r, "outcome", "") == "duplicate")
    assert duplicate.levelno == logging.INFO
    assert duplicate.delivery_id == delivery.delivery_id  # type: ignore[attr-defined]
    assert duplicate.event == "generation.succeeded"  # type: ignore[attr-defined]
    assert len(duplicate.key_prefix) == 12  # type: ignore[attr-defined]
    rejected = next(r for r in caplog.records if getattr(r, "outcome", "") == "invalid_signature")
    assert rejected.levelno == logging.WARNING
    assert rejected.delivery_id == forged.delivery_id  # type: ignore[attr-defined]
    assert all(r.levelno < logging.ERROR for r in caplog.records)


def test_a_handler_failure_logs_its_attempt(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)

    @hooks.on("generation.succeeded")
    def broken(event: GenerationSucceeded) -> None:
        raise RuntimeError("down")

    delivery = signed(events.succeeded(), SECRET)
    with caplog.at_level(logging.INFO, logger="gptimg_webhooks"):
        hooks.handle("POST", delivery.headers, delivery.body)
    failed = next(r for r in caplog.records if getattr(r, "outcome", "") == "handler_failed")
    assert failed.attempt == 1  # type: ignore[attr-defined]
    assert failed.delivery_id == delivery.delivery_id  # type: ignore[attr-defined]
