"""Deferred processing on a task queue you already run: the dispatcher contract.

In deferred mode the receiver records a delivery as pending, then hands the engine a
pointer: the ledger key, never the body. The engine's task calls :func:`run_pointer`
(or :func:`arun_pointer`) with that key, which leases that one record with its fencing
token, runs its handlers and settles it. A pointer delivered twice finds the record
done or in progress and does nothing, so the ledger stays the one authority for dedup,
retries, dead records and replay::

    hooks = Webhooks(mode="deferred", dispatcher=CeleryDispatcher(app, "myapp.hooks:hooks"))

A pointer lost between the ledger commit and the engine (a broker outage, a crash) is
found by :func:`sweep`: pending records older than a grace period, and records whose
task died holding the lease, are dispatched again. The receiver's keeper runs it every
``sweep_interval``; a periodic task (Celery beat, cron) may run it too.

Engines: :mod:`.celery`, :mod:`.django_tasks` and :mod:`.procrastinate`. Any other is a
:class:`Dispatcher`: a ``dispatch(key, delay=...)`` that enqueues a task which calls
:func:`run_pointer`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .._core.receiver import Webhooks

__all__ = [
    "Dispatcher",
    "PointerDispatcher",
    "arun_pointer",
    "load_hooks",
    "replay",
    "run_pointer",
    "sweep",
]

logger = logging.getLogger("gptimg_webhooks.dispatch")


@runtime_checkable
class Dispatcher(Protocol):
    """Hand a task queue a pointer to one pending record."""

    def dispatch(self, key: str, *, delay: float = 0.0) -> None:
        """Enqueue a task that runs ``run_pointer(hooks, key)`` ``delay`` seconds from now."""

    async def adispatch(self, key: str, *, delay: float = 0.0) -> None:
        """Async twin of :meth:`dispatch`."""


class PointerDispatcher:
    """A base for dispatchers: :meth:`adispatch` runs :meth:`dispatch` in a thread."""

    def dispatch(self, key: str, *, delay: float = 0.0) -> None:
        raise NotImplementedError

    async def adispatch(self, key: str, *, delay: float = 0.0) -> None:
        await asyncio.to_thread(self.dispatch, key, delay=delay)


def load_hooks(target: Webhooks | str | Callable[[], Webhooks]) -> Webhooks:
    """Resolve a receiver: itself, ``"package.module:attribute"``, or a factory.

    The attribute may be the receiver or a function returning it.
    """
    if isinstance(target, Webhooks):
        return target
    found: object = target
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        found = getattr(importlib.import_module(module), attr or "hooks")
    if callable(found) and not isinstance(found, Webhooks):
        found = found()
    if not isinstance(found, Webhooks):
        raise TypeError(f"{target!r} is not a Webhooks receiver")
    return found


def _log(key: str, outcome: str, attempt: int) -> None:
    log = logger.info if outcome in ("processed", "ignored", "not_due") else logger.warning
    log(
        "pointer %s: %s",
        key[:12],
        outcome,
        extra={"key_prefix": key[:12], "attempt": attempt, "outcome": outcome},
    )


def run_pointer(hooks: Webhooks, key: str) -> str:
    """Run pending record ``key`` once: lease it, run its handlers, settle it; blocking.

    Return the outcome: ``processed``, ``ignored``, ``handler_failed`` (a retry is
    dispatched after the receiver's backoff), ``dead``, ``lease_lost``,
    ``store_unavailable``, or ``not_due`` (done, in progress, waiting out a retry
    delay, dead or gone: nothing to do, so a duplicate task is harmless).
    """
    leased = hooks.store.lease_one(key, lease=hooks.lease)
    if leased is None:
        _log(key, "not_due", 0)
        return "not_due"
    record, claim = leased
    outcome = hooks.run_record(record, claim)
    _log(key, outcome, claim.attempt)
    if outcome == "handler_failed" and hooks.dispatcher is not None:
        delay = hooks.backoff.delay(claim.attempt) or 0.0
        hooks.send_pointer(key, delay)
    return outcome


async def arun_pointer(hooks: Webhooks, key: str) -> str:
    """Async twin of :func:`run_pointer` (for async task runners)."""
    leased = await hooks.store.alease_one(key, lease=hooks.lease)
    if leased is None:
        _log(key, "not_due", 0)
        return "not_due"
    record, claim = leased
    outcome = await hooks.arun_record(record, claim)
    _log(key, outcome, claim.attempt)
    if outcome == "handler_failed" and hooks.dispatcher is not None:
        delay = hooks.backoff.delay(claim.attempt) or 0.0
        await hooks.asend_pointer(key, delay)
    return outcome


def sweep(hooks: Webhooks, *, limit: int = 100, grace: float | None = None) -> list[str]:
    """Dispatch again records whose pointer was lost or whose task died; return their keys.

    See :meth:`Webhooks.redispatch`. Run it from a periodic task (Celery beat, a
    django-tasks periodic job, cron); the receiver's keeper also runs it.
    """
    return hooks.redispatch(limit=limit, grace=grace)


def replay(hooks: Webhooks, key: str) -> bool:
    """Put a failed or dead record back to pending and dispatch it; return whether it was one."""
    if not hooks.replay(key):
        return False
    if hooks.dispatcher is not None:
        hooks.send_pointer(key)
    return True
