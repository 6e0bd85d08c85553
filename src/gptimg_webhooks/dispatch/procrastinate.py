"""Procrastinate: run deferred deliveries as PostgreSQL jobs.

``pip install 'gptimg-webhooks[procrastinate]'``::

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=...))
    dispatcher = ProcrastinateDispatcher(app, "myapp.hooks:hooks")
    dispatcher.periodic_sweep()          # optional: the sweep as a periodic task
    hooks = Webhooks(mode="deferred", dispatcher=dispatcher)

    # procrastinate --app=myapp.hooks.app schema --apply      once
    # procrastinate --app=myapp.hooks.app worker              runs the pointers

The receiver's process must open the app (``app.open()``, or ``app.open_async()`` in an
ASGI lifespan) before the first delivery. The job carries the ledger key only. With the
PostgreSQL ledger in the same database, the job is deferred in the ledger's own
transaction: the record and its job commit together, so no pointer can be lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .._core.receiver import Webhooks
from . import PointerDispatcher, arun_pointer, load_hooks, sweep

__all__ = ["QUEUE", "RUN_TASK", "SWEEP_TASK", "ProcrastinateDispatcher"]

RUN_TASK = "gptimg_webhooks.run_pointer"
SWEEP_TASK = "gptimg_webhooks.sweep"
QUEUE = "gptimg_webhooks"


class ProcrastinateDispatcher(PointerDispatcher):
    """Register the pointer task on ``app`` and defer one job per pointer.

    ``hooks``: the receiver, ``"module:attribute"`` or a factory (resolved on first use).
    """

    def __init__(
        self,
        app: Any,
        hooks: Webhooks | str | Callable[[], Webhooks],
        *,
        queue: str = QUEUE,
    ) -> None:
        self.app = app
        self._target = hooks
        self._hooks: Webhooks | None = None
        self.queue = queue
        #: The loop the app was opened on (a worker's): sync dispatches go through it.
        self._loop: asyncio.AbstractEventLoop | None = None

        async def run_pointer_task(key: str) -> None:
            self._loop = asyncio.get_running_loop()
            await arun_pointer(self.hooks, key)

        self.task = app.task(name=RUN_TASK, queue=queue)(run_pointer_task)

    @property
    def hooks(self) -> Webhooks:
        if self._hooks is None:
            self._hooks = load_hooks(self._target)
        return self._hooks

    def periodic_sweep(self, cron: str = "* * * * *") -> Any:
        """Register the sweep as a periodic task (the worker runs it on ``cron``).

        Five fields as cron's; a sixth is seconds (``"* * * * * */10"``: every ten).
        """

        async def run(timestamp: int) -> int:
            # Async, so the pointers it sends go through this worker's open app and loop.
            self._loop = asyncio.get_running_loop()
            return len(await asyncio.to_thread(sweep, self.hooks))

        registered = self.app.task(name=SWEEP_TASK, queue=self.queue)(run)
        return self.app.periodic(cron=cron)(registered)

    def _configured(self, delay: float) -> Any:
        if delay > 0:
            return self.task.configure(schedule_in={"seconds": delay})
        return self.task

    def dispatch(self, key: str, *, delay: float = 0.0) -> None:
        """Defer the pointer job (the app must be open in this process)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The app's async pool belongs to that loop (a worker's keeper thread is here).
            future = asyncio.run_coroutine_threadsafe(self.adispatch(key, delay=delay), loop)
            future.result(timeout=30)
            return
        self._configured(delay).defer(key=key)

    def dispatch_in_transaction(self, tx: Any, key: str) -> None:
        """Defer the job on the ledger's own connection: it commits with the record.

        Called by the receiver inside a PostgreSQL ledger's transaction (the ledger and
        procrastinate's tables share one database), so no pointer can be lost.
        """
        if not _psycopg_connection(tx):
            self.dispatch(key)
            return
        job = self.task.configure().make_new_job(key=key)
        self.app.job_manager.defer_job(job, connection=tx)

    async def adispatch_in_transaction(self, tx: Any, key: str) -> None:
        """Async twin of :meth:`dispatch_in_transaction` (an ``AsyncConnection``)."""
        if not _psycopg_connection(tx):
            await self.adispatch(key)
            return
        job = self.task.configure().make_new_job(key=key)
        await self.app.job_manager.defer_job_async(job, connection=tx)

    async def adispatch(self, key: str, *, delay: float = 0.0) -> None:
        from procrastinate.exceptions import AppNotOpen

        try:
            await self._configured(delay).defer_async(key=key)
        except AppNotOpen:  # opened for sync use (app.open()): defer in a thread
            await asyncio.to_thread(self._configured(delay).defer, key=key)


def _psycopg_connection(tx: Any) -> bool:
    """Tell whether the ledger's transaction is a psycopg connection (the PostgreSQL store)."""
    module = type(tx).__module__
    return module.startswith("psycopg")
