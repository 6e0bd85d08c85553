"""Prometheus metrics: exact counts from known traffic, gauges read from the ledger."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gptimg_webhooks import GenerationSucceeded, Webhooks
from gptimg_webhooks.dispatch import run_pointer
from gptimg_webhooks.metrics import instrument
from gptimg_webhooks.stores.memory import MemoryStore
from gptimg_webhooks.testing import events, random_secret, signed

SECRET = random_secret()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def send(hooks: Webhooks, delivery: object) -> int:
    response = hooks.handle("POST", delivery.headers, delivery.body)  # type: ignore[attr-defined]
    return response.status


def test_answers_signature_failures_and_runs_are_counted_exactly() -> None:
    registry = CollectorRegistry()
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    instrument(hooks, registry)

    @hooks.on("generation.succeeded")
    def fine(event: GenerationSucceeded) -> None:
        pass

    originals = [signed(events.succeeded(), SECRET) for _ in range(3)]
    for delivery in originals:
        send(hooks, delivery)
    send(hooks, originals[0])
    send(hooks, originals[1].forged())
    send(hooks, signed(events.succeeded(), SECRET, wrong_secret=True))
    send(hooks, signed(events.succeeded(), SECRET, omit=["signature"]))
    send(hooks, signed(events.failed(), SECRET))  # no handler: ignored

    deliveries = "gptimg_webhooks_deliveries_total"
    succeeded = "generation.succeeded"
    assert value(registry, deliveries, event=succeeded, outcome="processed") == 3
    assert value(registry, deliveries, event=succeeded, outcome="duplicate") == 2
    assert value(registry, deliveries, event="generation.failed", outcome="ignored") == 1
    assert value(registry, deliveries, event="", outcome="invalid_signature") == 2
    failures = "gptimg_webhooks_signature_failures_total"
    assert value(registry, failures, cause="mismatch") == 1
    assert value(registry, failures, cause="missing") == 1
    assert value(registry, "gptimg_webhooks_answer_latency_seconds_count") == 8
    runs = "gptimg_webhooks_runs_total"
    assert value(registry, runs, event=succeeded, runner="inline", outcome="processed") == 3
    duration = "gptimg_webhooks_handler_duration_seconds_count"
    assert value(registry, duration, event=succeeded, runner="inline") == 3


def test_ledger_gauges_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    store = MemoryStore()
    hooks = Webhooks(SECRET, store=store, mode="deferred", include_shared=False)
    instrument(hooks, registry)
    for _ in range(3):
        send(hooks, signed(events.succeeded(), SECRET))
    assert value(registry, "gptimg_webhooks_pending_records") == 3
    assert value(registry, "gptimg_webhooks_dead_records") == 0
    age = value(registry, "gptimg_webhooks_oldest_pending_age_seconds")
    assert age is not None and 0 <= age < 60
    key = store.records()[0].key
    assert run_pointer(hooks, key) == "ignored"  # no handler
    assert value(registry, "gptimg_webhooks_pending_records") == 2
    assert value(registry, "gptimg_webhooks_ledger_up") == 1
    limit = "gptimg_webhooks_failure_streak_limit"
    assert value(registry, limit, endpoint="/hooks/gptimg") == 8


def test_the_failure_streak_follows_failed_answers_and_resets_on_success() -> None:
    registry = CollectorRegistry()
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    instrument(hooks, registry)
    broken = True

    @hooks.on("generation.succeeded")
    def flaky(event: GenerationSucceeded) -> None:
        if broken:
            raise RuntimeError("down")

    for _ in range(3):
        assert send(hooks, signed(events.succeeded(), SECRET)) == 500
    streak = "gptimg_webhooks_failure_streak"
    assert value(registry, streak, endpoint="/hooks/gptimg") == 3
    broken = False
    assert send(hooks, signed(events.succeeded(), SECRET)) == 200
    assert value(registry, streak, endpoint="/hooks/gptimg") == 0


@pytest.mark.redis
def test_redis_ledger_gauges_come_from_native_queries() -> None:
    from tests.support.services import ensure_redis

    url = ensure_redis()
    registry = CollectorRegistry()
    prefix = f"gptimg:t-metrics-{random_secret()[-8:]}:"
    hooks = Webhooks(SECRET, store=f"{url}?prefix={prefix}", mode="deferred")
    instrument(hooks, registry)
    try:
        for _ in range(2):
            send(hooks, signed(events.succeeded(), SECRET))
        assert value(registry, "gptimg_webhooks_pending_records") == 2
        assert value(registry, "gptimg_webhooks_failure_streak", endpoint="/hooks/gptimg") == 0
    finally:
        import redis

        client = redis.Redis.from_url(url)
        for name in client.scan_iter(match=f"{prefix}*"):
            client.delete(name)
        hooks.close()
