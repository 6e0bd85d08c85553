"""The health check: 200 or 503 with a short JSON reason, and its framework adapters."""

from __future__ import annotations

import asyncio

import httpx

from gptimg_webhooks import GenerationSucceeded, Webhooks, health
from gptimg_webhooks.stores.memory import MemoryStore
from gptimg_webhooks.stores.redis import RedisStore
from gptimg_webhooks.testing import events, random_secret, signed
from tests.support.servers import free_port

SECRET = random_secret()


class Clock:
    def __init__(self) -> None:
        self.now = 1_777_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_quiet_receiver_is_healthy() -> None:
    status, body = health.check(Webhooks(SECRET, store="memory://"))
    assert status == 200
    assert body["ok"] is True and body["reason"] == "ok" and body["failure_streak"] == 0


def test_an_unreachable_ledger_answers_503() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="gptimg:t-health:")
    status, body = health.check(Webhooks(SECRET, store=store))
    assert status == 503 and body == {"ok": False, "reason": "the ledger is unavailable"}


def test_a_failure_streak_answers_503_before_the_provider_disables_the_endpoint() -> None:
    hooks = Webhooks(SECRET, store="memory://", failure_threshold=3, include_shared=False)

    @hooks.on("generation.succeeded")
    def broken(event: GenerationSucceeded) -> None:
        raise RuntimeError("down")

    delivery = signed(events.succeeded(), SECRET)
    assert hooks.handle("POST", delivery.headers, delivery.body).status == 500
    assert health.check(hooks)[0] == 200
    again = signed(events.succeeded(), SECRET)
    assert hooks.handle("POST", again.headers, again.body).status == 500
    status, body = health.check(hooks)
    assert status == 503
    assert body["failure_streak"] == 2 and "in a row" in body["reason"]


def test_an_old_pending_record_answers_503() -> None:
    clock = Clock()
    hooks = Webhooks(SECRET, store=MemoryStore(clock=clock), mode="deferred")
    delivery = signed(events.succeeded(), SECRET)
    hooks.handle("POST", delivery.headers, delivery.body)
    assert health.check(hooks, max_pending_age=60)[0] == 200
    clock.now += 61
    status, body = health.check(hooks, max_pending_age=60)
    assert status == 503 and body["pending"] == 1 and "oldest pending" in body["reason"]


def test_the_asgi_and_flask_adapters_answer_with_the_check() -> None:
    from flask import Flask

    hooks = Webhooks(SECRET, store="memory://")

    async def asgi() -> httpx.Response:
        transport = httpx.ASGITransport(app=health.asgi_app(hooks))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/healthz")

    answer = asyncio.run(asgi())
    assert answer.status_code == 200 and answer.json()["ok"] is True
    app = Flask(__name__)
    app.add_url_rule("/healthz", view_func=health.flask_view(hooks, max_streak=0))
    flask_answer = app.test_client().get("/healthz")
    assert flask_answer.status_code == 503 and flask_answer.json["failure_streak"] == 0
