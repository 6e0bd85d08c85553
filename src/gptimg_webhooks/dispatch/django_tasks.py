"""Django tasks: run deferred deliveries on Django's task framework.

``pip install 'gptimg-webhooks[django-tasks]'``: Django 6's ``django.tasks``, or the
``django-tasks`` backport before Django 6 (with ``django-tasks-db`` for its database
backend). One adapter covers every backend (database, RQ, Celery)::

    # settings.py
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

    # myapp/hooks.py
    hooks = Webhooks(mode="deferred", dispatcher=DjangoTasksDispatcher("myapp.hooks:hooks"))

    # python manage.py db_worker          (the database backend's worker)

The task's arguments are the receiver's import path and the ledger key: JSON, never the
body. The tasks are declared on first use, so settings.py may build the dispatcher.

The framework has no scheduler: the sweep runs in the keeper of every process serving the
receiver, and from cron as ``python manage.py gptimg_webhooks_sweep`` (or enqueue
:data:`sweep_task` from a backend's own scheduler).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from . import PointerDispatcher, load_hooks, run_pointer, sweep

# Also ``run_pointer_task`` and ``sweep_task``: the tasks, declared on first access.
__all__ = ["DjangoTasksDispatcher"]

_TASKS = ("run_pointer_task", "sweep_task")


def _declare() -> dict[str, Any]:
    """Declare the tasks on first use: declaring one reads settings, so not at import."""
    try:  # Django 6
        from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # the backport
        from django_tasks import task  # type: ignore[no-redef,unused-ignore]

    def run_pointer_task(hooks: str, key: str) -> str:
        """Run one pending record (the pointer task)."""
        return run_pointer(load_hooks(hooks), key)

    def sweep_task(hooks: str, limit: int = 100) -> int:
        """Dispatch again the records whose pointer was lost."""
        return len(sweep(load_hooks(hooks), limit=limit))

    found = {}
    for func in (run_pointer_task, sweep_task):
        # Workers import a task by its module path: make it this module's attribute.
        func.__qualname__ = func.__name__
        found[func.__name__] = globals()[func.__name__] = task()(func)
    return found


def __getattr__(name: str) -> Any:
    if name in _TASKS:  # only called while the tasks are not declared yet
        return _declare()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _task(name: str) -> Any:
    found = globals().get(name)
    return found if found is not None else _declare()[name]


class DjangoTasksDispatcher(PointerDispatcher):
    """Enqueue :data:`run_pointer_task` for each pointer.

    ``hooks`` is the receiver's import path (``"module:attribute"``): the worker imports
    it. ``backend``, ``queue_name`` and ``priority`` choose where the task goes.
    """

    def __init__(
        self,
        hooks: str,
        *,
        backend: str | None = None,
        queue_name: str | None = None,
        priority: int | None = None,
    ) -> None:
        self.hooks_path = hooks
        self.options: dict[str, Any] = {}
        if backend is not None:
            self.options["backend"] = backend
        if queue_name is not None:
            self.options["queue_name"] = queue_name
        if priority is not None:
            self.options["priority"] = priority

    def dispatch(self, key: str, *, delay: float = 0.0) -> None:
        """Enqueue the pointer task, to run from ``delay`` seconds on."""
        options = dict(self.options)
        if delay > 0:
            options["run_after"] = datetime.now(timezone.utc) + timedelta(seconds=delay)
        declared = _task("run_pointer_task")
        (declared.using(**options) if options else declared).enqueue(self.hooks_path, key)
