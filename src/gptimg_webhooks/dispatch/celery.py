"""Celery: run deferred deliveries as Celery tasks (``pip install 'gptimg-webhooks[celery]'``).

::

    app = Celery("myapp", broker="redis://127.0.0.1:6379/0")
    dispatcher = CeleryDispatcher(app, "myapp.hooks:hooks")
    hooks = Webhooks(mode="deferred", store="redis://...", dispatcher=dispatcher)

    # celery -A myapp.hooks worker        runs the pointers
    # celery -A myapp.hooks beat          runs the sweep, with:
    app.conf.beat_schedule = {"gptimg-sweep": {"task": SWEEP_TASK, "schedule": 30.0}}

The task carries the ledger key only. It is sent after the ledger's commit; with the
Django ledger (``django://``) inside a transaction, on ``transaction.on_commit``. Tasks
are acknowledged early: a task whose process dies is not redelivered by the broker
(its record's lease would still be live), the sweep dispatches it again once the lease
runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.receiver import Webhooks
from . import PointerDispatcher, load_hooks, run_pointer, sweep

__all__ = ["RUN_TASK", "SWEEP_TASK", "CeleryDispatcher"]

RUN_TASK = "gptimg_webhooks.run_pointer"
SWEEP_TASK = "gptimg_webhooks.sweep"


class CeleryDispatcher(PointerDispatcher):
    """Register the pointer and sweep tasks on ``app``; dispatch pointers to them.

    ``hooks``: the receiver, ``"module:attribute"`` or a factory (resolved on first use,
    so the receiver may be built with this dispatcher). ``queue``: the Celery queue
    (default: the app's). ``on_commit``: send on Django's ``transaction.on_commit``;
    by default when the receiver's ledger is the Django store.
    """

    def __init__(
        self,
        app: Any,
        hooks: Webhooks | str | Callable[[], Webhooks],
        *,
        queue: str | None = None,
        on_commit: bool | None = None,
    ) -> None:
        self.app = app
        self._target = hooks
        self._hooks: Webhooks | None = None
        self.queue = queue
        self._on_commit = on_commit

        # Plain functions: Celery reads a task's signature, and a bound method's misleads it.
        def run_pointer_task(key: str) -> str:
            return run_pointer(self.hooks, key)

        def sweep_task(limit: int = 100) -> int:
            return len(sweep(self.hooks, limit=limit))

        self.task = app.task(name=RUN_TASK, ignore_result=True, acks_late=False)(run_pointer_task)
        self.sweep_task = app.task(name=SWEEP_TASK, ignore_result=True)(sweep_task)

    @property
    def hooks(self) -> Webhooks:
        if self._hooks is None:
            self._hooks = load_hooks(self._target)
        return self._hooks

    def _django_ledger(self) -> bool:
        if self._on_commit is not None:
            return self._on_commit
        return "django" in getattr(type(self.hooks.store), "schemes", ())

    def dispatch(self, key: str, *, delay: float = 0.0) -> None:
        """Send the pointer task (after the Django transaction commits, on that ledger)."""
        options: dict[str, Any] = {}
        if delay > 0:
            options["countdown"] = delay
        if self.queue is not None:
            options["queue"] = self.queue

        def send() -> None:
            self.task.apply_async((key,), **options)

        if self._django_ledger():
            from django.db import transaction

            transaction.on_commit(send, using=getattr(self.hooks.store, "alias", None))
        else:
            send()
