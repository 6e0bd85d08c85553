"""Never miss a generation: reconciliation against the local provider, over real HTTP.

The provider (``LocalProvider`` under uvicorn, its clock sped up) delivers webhooks to a
receiver under uvicorn; the app submits through ``Client(on_submitted=hooks.watch)``. In
every scenario each generation's handlers run exactly once, by webhook, by poll or both.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware

from gptimg_webhooks import Delivery, Event, Reconciliation, Webhooks
from gptimg_webhooks.asgi import WebhookMiddleware
from gptimg_webhooks.cli._server import BackgroundServer
from gptimg_webhooks.client import Client, poller
from gptimg_webhooks.stores.memory import MemoryStore
from gptimg_webhooks.testing import LocalProvider
from tests.support.servers import free_port


@dataclass
class Outage:
    """Wrap an ASGI app; while ``status`` is set, answer it without reaching the app."""

    app: Any
    status: int | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.status is not None:
            await send({"type": "http.response.start", "status": self.status, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        await self.app(scope, receive, send)


@dataclass
class World:
    provider: LocalProvider
    hooks: Webhooks
    api: Client
    gate: Outage
    endpoint: str
    runs: Counter[str] = field(default_factory=Counter)
    how: list[tuple[str, str]] = field(default_factory=list)

    def wait_for(self, generation_ids: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.runs[g] for g in generation_ids):
            assert time.monotonic() < deadline, (self.runs, generation_ids)
            time.sleep(0.05)
        time.sleep(0.5)  # anything that would run twice has had its chance


@pytest.fixture
def world() -> Iterator[World]:
    provider = LocalProvider(time_scale=3000, queued_for=0.5, runs_for=1.0)
    key = provider.add_key()
    receiver_port = free_port()
    with BackgroundServer(provider, "127.0.0.1", free_port()) as api_server:
        base = f"{api_server.url}/api/v1"
        endpoint, secret = provider.register_webhook(
            f"http://127.0.0.1:{receiver_port}/hooks/gptimg"
        )
        hooks = Webhooks(
            secret,
            store=MemoryStore(),
            include_shared=False,
            sweep_interval=0.2,
            reconcile=Reconciliation(poller(key, base_url=base), after=0.3, every=0.1),
        )
        lock = threading.Lock()

        def record(event: Event, delivery: Delivery) -> None:
            with lock:
                world.runs[event.data.generation_id] += 1  # type: ignore[union-attr]
                world.how.append((event.data.generation_id, delivery.id))  # type: ignore[union-attr]

        hooks.on("generation.succeeded", "generation.failed")(record)
        gate = Outage(Starlette(middleware=[Middleware(WebhookMiddleware, receiver=hooks)]))
        with (
            BackgroundServer(gate, "127.0.0.1", receiver_port),
            Client(key, base_url=base, on_submitted=hooks.watch) as api,
        ):
            world = World(provider, hooks, api, gate, endpoint)
            hooks.start()
            yield world
            provider.wait_idle(timeout=30)
        hooks.close()


def submit(world: World, n: int, marker: str = "") -> list[str]:
    return [world.api.generate(f"a lighthouse {i} {marker}").generation_id for i in range(n)]


def test_a_webhook_and_a_poll_racing_for_a_generation_run_its_handlers_once(
    world: World,
) -> None:
    generations = submit(world, 8) + submit(world, 2, "[fail]")
    world.wait_for(generations)
    assert set(world.runs) == set(generations)
    assert set(world.runs.values()) == {1}
    world.provider.wait_idle(timeout=30)
    # Every generation was also delivered by webhook. Where the poll won, the webhook
    # found it done (200 duplicate) or still running (409, and its retry then a 200).
    last: dict[str | None, int | None] = {}
    for d in world.provider.deliveries:
        assert d.status in (200, 202, 409), d.status
        last[d.generation_id] = d.status
    assert set(last) == set(generations)
    assert set(last.values()) <= {200, 202}


def test_a_receiver_down_past_the_providers_retry_window_loses_nothing(world: World) -> None:
    world.gate.status = 503
    world.hooks.sweep = False  # nobody polls while the receiver is "down"
    generations = submit(world, 5)
    world.provider.wait_idle(timeout=30)  # the provider tried 4 times each, then gave up
    assert {d.status for d in world.provider.deliveries} == {503}
    assert not world.runs
    world.gate.status = None
    world.hooks.reconcile_now()  # by hand, as `gptimg-webhooks reconcile`
    world.wait_for(generations)
    assert world.runs == Counter({g: 1 for g in generations})
    assert {d for _, d in world.how} == {"reconciled"}


def test_deliveries_failing_until_the_endpoint_is_disabled_are_reconciled(world: World) -> None:
    world.gate.status = 500  # something in front of the receiver is broken
    world.hooks.sweep = False
    generations = submit(world, 4)
    world.provider.wait_idle(timeout=30)
    simulator = world.provider.endpoints[world.endpoint].simulator
    assert simulator.disabled  # 8 consecutive failures: the provider gave up on it
    world.gate.status = None
    world.hooks.sweep = True  # the receiver's own sweep polls what is due
    world.wait_for(generations)
    assert world.runs == Counter({g: 1 for g in generations})
