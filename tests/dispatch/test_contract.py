"""The dispatcher contract in one process: pointers, dedup by the ledger, lost pointers."""

from __future__ import annotations

import asyncio

import pytest

from gptimg_webhooks import ConfigurationError, GenerationSucceeded, Webhooks
from gptimg_webhooks.dispatch import (
    Dispatcher,
    PointerDispatcher,
    arun_pointer,
    replay,
    run_pointer,
    sweep,
)
from gptimg_webhooks.stores import State
from gptimg_webhooks.stores.memory import MemoryStore
from gptimg_webhooks.testing import events, random_secret, signed
from gptimg_webhooks.worker import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1_777_000_000.0

    def __call__(self) -> float:
        return self.now


class Pointers(PointerDispatcher):
    """Keep pointers in a list, as a broker would; ``down`` makes dispatch raise."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []
        self.down = False

    def dispatch(self, key: str, *, delay: float = 0.0) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.sent.append((key, delay))


SECRET = random_secret()


def make(clock: Clock, pointers: Pointers, **options: object) -> tuple[Webhooks, list[str]]:
    hooks = Webhooks(
        SECRET,
        store=MemoryStore(clock=clock),
        mode="deferred",
        dispatcher=pointers,
        clock=clock,
        include_shared=False,
        **options,  # type: ignore[arg-type]
    )
    effects: list[str] = []

    @hooks.on("generation.succeeded")
    def effect(event: GenerationSucceeded) -> None:
        if event.data.generation_id.startswith("fail") and "heal" not in effects:
            raise RuntimeError("failing on purpose")
        effects.append(event.data.generation_id)

    return hooks, effects


def post(hooks: Webhooks, delivery: object) -> str:
    response = hooks.handle("POST", delivery.headers, delivery.body)  # type: ignore[attr-defined]
    return str(response.json["status"])


def test_a_pointer_is_dispatched_once_per_new_record_and_runs_it_once() -> None:
    pointers = Pointers()
    hooks, effects = make(Clock(), pointers)
    delivery = signed(events.succeeded(), SECRET)
    assert post(hooks, delivery) == "queued"
    assert post(hooks, delivery) == "queued"  # a retry while pending: no second pointer
    assert post(hooks, delivery.forged()) == "queued"
    assert len(pointers.sent) == 1
    key, delay = pointers.sent[0]
    assert delay == 0.0
    assert run_pointer(hooks, key) == "processed"
    assert run_pointer(hooks, key) == "not_due"  # the engine delivered the task twice
    assert effects == [delivery.sample.generation_id]  # type: ignore[union-attr]
    assert post(hooks, delivery) == "duplicate"
    assert len(pointers.sent) == 1


def test_the_async_pointer_runner_runs_a_record_once() -> None:
    pointers = Pointers()
    hooks, effects = make(Clock(), pointers)
    post(hooks, signed(events.succeeded(), SECRET))
    key = pointers.sent[0][0]

    async def twice() -> list[str]:
        return [await arun_pointer(hooks, key), await arun_pointer(hooks, key)]

    assert asyncio.run(twice()) == ["processed", "not_due"]
    assert len(effects) == 1


def test_a_pointer_finds_a_record_in_progress_and_does_nothing() -> None:
    pointers = Pointers()
    hooks, effects = make(Clock(), pointers)
    post(hooks, signed(events.succeeded(), SECRET))
    key = pointers.sent[0][0]
    assert hooks.store.lease_one(key, lease=60) is not None  # another task runs it
    assert run_pointer(hooks, key) == "not_due"
    assert effects == []


def test_a_failed_run_dispatches_its_retry_after_the_backoff_then_stays_dead_until_replayed() -> (
    None
):
    pointers = Pointers()
    clock = Clock()
    hooks, effects = make(clock, pointers, backoff=Backoff(max_attempts=2, initial=7.0))
    post(hooks, signed(events.succeeded(generation_id="fail_1"), SECRET))
    key = pointers.sent[0][0]
    assert run_pointer(hooks, key) == "handler_failed"
    assert pointers.sent[-1] == (key, 7.0)
    assert run_pointer(hooks, key) == "not_due"  # the retry delay has not passed
    clock.now += 7.0
    assert sweep(hooks, grace=30) == []  # its retry's pointer is on its way, not lost
    assert run_pointer(hooks, key) == "dead"
    assert len(pointers.sent) == 2  # no retry after the last attempt
    record = hooks.store.get(key)
    assert record is not None and record.state is State.DEAD
    effects.append("heal")
    assert replay(hooks, key) is True
    assert pointers.sent[-1] == (key, 0.0)
    assert run_pointer(hooks, key) == "processed"
    assert effects == ["heal", "fail_1"]


def test_a_lost_pointer_is_dispatched_again_after_the_grace_and_only_once_per_grace() -> None:
    pointers = Pointers()
    clock = Clock()
    hooks, _ = make(clock, pointers)
    pointers.down = True
    assert post(hooks, signed(events.succeeded(), SECRET)) == "queued"  # recorded anyway
    assert pointers.sent == []
    pointers.down = False
    assert sweep(hooks, grace=30) == []  # too young: its pointer may be on its way
    clock.now += 31
    keys = sweep(hooks, grace=30)
    assert len(keys) == 1 and pointers.sent == [(keys[0], 0.0)]
    assert sweep(hooks, grace=30) == []  # not again within the grace in this process


def test_a_record_whose_task_died_is_dispatched_again_once_its_lease_runs_out() -> None:
    pointers = Pointers()
    clock = Clock()
    hooks, effects = make(clock, pointers, lease=10.0)
    post(hooks, signed(events.succeeded(), SECRET))
    key = pointers.sent[0][0]
    assert hooks.store.lease_one(key, lease=10.0) is not None  # a task that then dies
    assert sweep(hooks, grace=0) == []
    clock.now += 11
    assert sweep(hooks, grace=0) == [key]
    assert run_pointer(hooks, key) == "processed"
    assert len(effects) == 1


def test_a_dispatcher_needs_deferred_mode() -> None:
    with pytest.raises(ConfigurationError, match="deferred"):
        Webhooks(SECRET, store="memory://", dispatcher=Pointers())


def test_the_protocol_is_what_the_receiver_calls() -> None:
    assert isinstance(Pointers(), Dispatcher)


def test_celery_tasks_run_the_pointer_and_the_sweep_in_eager_mode() -> None:
    celery = pytest.importorskip("celery")
    from gptimg_webhooks.dispatch.celery import CeleryDispatcher

    app = celery.Celery("gptimg_contract", broker="memory://")
    app.conf.task_always_eager = True  # the task runs inside apply_async, in this process
    clock = Clock()
    dispatcher = CeleryDispatcher(app, lambda: hooks)
    hooks = Webhooks(
        SECRET,
        store=MemoryStore(clock=clock),
        mode="deferred",
        dispatcher=dispatcher,
        clock=clock,
        include_shared=False,
    )
    seen: list[str] = []
    hooks.on("generation.succeeded")(lambda event: seen.append(event.data.generation_id))
    delivery = signed(events.succeeded(), SECRET)
    assert post(hooks, delivery) == "queued"
    assert seen == [delivery.sample.generation_id]  # type: ignore[union-attr]
    assert post(hooks, delivery) == "duplicate"
    assert dispatcher.sweep_task.apply().get() == 0
