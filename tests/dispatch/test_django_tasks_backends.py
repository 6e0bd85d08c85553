"""The django-tasks adapter on a second backend: Django's immediate backend runs the pointer
task inside ``enqueue``, so the whole contract runs in this process."""

from __future__ import annotations

import pytest

from gptimg_webhooks import GenerationSucceeded, Webhooks
from gptimg_webhooks.stores.memory import MemoryStore
from gptimg_webhooks.testing import events, random_secret, signed

django_tasks = pytest.importorskip("django_tasks")

SECRET = random_secret()
effects: list[str] = []
hooks: Webhooks | None = None


def build() -> Webhooks:
    from gptimg_webhooks.dispatch.django_tasks import DjangoTasksDispatcher

    receiver = Webhooks(
        SECRET,
        store=MemoryStore(),
        mode="deferred",
        dispatcher=DjangoTasksDispatcher(f"{__name__}:hooks"),
        include_shared=False,
    )

    @receiver.on("generation.succeeded")
    def effect(event: GenerationSucceeded) -> None:
        effects.append(event.data.generation_id)

    return receiver


def test_the_immediate_backend_runs_each_new_record_once(settings: object) -> None:
    global hooks
    settings.TASKS = {  # type: ignore[attr-defined]
        "default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}
    }
    hooks = build()
    effects.clear()
    delivery = signed(events.succeeded(), SECRET)
    for copy in (delivery, delivery, delivery.forged()):
        answer = hooks.handle("POST", copy.headers, copy.body)
        assert answer.status in (200, 202)
    assert effects == [delivery.sample.generation_id]  # type: ignore[union-attr]
    assert [r.state.value for r in hooks.store.records()] == ["done"]

    from gptimg_webhooks.dispatch.django_tasks import sweep_task

    assert sweep_task.enqueue(f"{__name__}:hooks").return_value == 0  # nothing lost
