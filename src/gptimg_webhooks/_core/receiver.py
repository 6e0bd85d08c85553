"""The receiver: configuration, handler registry, and the two drivers of :func:`flow`."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigurationError, LeaseLost, StoreUnavailable
from .events import Event
from .handlers import Delivery, HandlerSpec, Registry
from .ledger import Store
from .protocol import (
    Command,
    Dispatch,
    Fail,
    Headers,
    Lease,
    RecordFailure,
    Response,
    flow,
)
from .signature import Verifier, parse_secrets

if TYPE_CHECKING:
    from .handlers import ErrorHook

__all__ = ["DEFAULT_MAX_BODY_SIZE", "STORE_ENV", "Webhooks", "shared_registry"]

logger = logging.getLogger("gptimg_webhooks")

STORE_ENV = "GPTIMG_WEBHOOK_STORE"
DEFAULT_STORE = "sqlite:///gptimg_webhooks.sqlite3"
#: 1 MiB: a delivery is a few hundred bytes; 1 MiB leaves room for outputs lists far
#: beyond n=4 while keeping a flood of large bodies cheap to refuse.
DEFAULT_MAX_BODY_SIZE = 1 << 20
#: 30 days: the provider retries for about 12.5 minutes, so this covers its window more
#: than 3000 times over, and keeps replays of captured bodies recognised for a month.
DEFAULT_RETENTION = 30 * 24 * 3600.0
#: The provider disables an endpoint at 8 consecutive failures. After 5 handler
#: failures in a row the 6th is answered 2xx, which leaves room for 409s and 503s.
DEFAULT_FAILURE_THRESHOLD = 5
#: A handler running longer than this may be run again by a retry.
DEFAULT_LEASE = 120.0
#: The provider's last retry comes about 12.5 minutes after the first attempt.
MIN_EVENT_AGE = 15 * 60.0

#: Handlers registered with the module-level :func:`on`; every receiver runs them
#: after its own, unless built with ``include_shared=False``.
shared_registry = Registry()


def _seconds(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


class Webhooks:
    """Verify, record, parse and dispatch gptimage2.plus deliveries.

    ``secret`` is one ``whsec_...`` string or several (rotation); by default it is read
    from ``GPTIMG_WEBHOOK_SECRET`` (comma separated). ``store`` is a :class:`Store` or a
    URL (``memory://``, ``sqlite:///file``, ...); by default ``GPTIMG_WEBHOOK_STORE``,
    else a SQLite file in the working directory.
    """

    def __init__(
        self,
        secret: str | Sequence[str] | None = None,
        *,
        store: Store | str | None = None,
        path: str = "/hooks/gptimg",
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        lease: float | timedelta = DEFAULT_LEASE,
        retention: float | timedelta = DEFAULT_RETENTION,
        max_event_age: float | timedelta | None = None,
        clock_skew: float | timedelta = 300.0,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        mode: Literal["inline", "deferred"] = "inline",
        on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
        include_shared: bool = True,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = Verifier(parse_secrets(secret))
        if store is None or isinstance(store, str):
            from ..stores import open_store

            store = open_store(store or os.environ.get(STORE_ENV) or DEFAULT_STORE)
        self.store: Store = store
        if not path.startswith("/"):
            raise ConfigurationError(f"path must start with '/': {path!r}")
        self.path = path
        if max_body_size <= 0:
            raise ConfigurationError("max_body_size must be positive")
        self.max_body_size = max_body_size
        self.lease = float(_seconds(lease) or 0)
        self.retention = float(_seconds(retention) or 0)
        if self.lease <= 0 or self.retention <= 0:
            raise ConfigurationError("lease and retention must be positive")
        self.max_event_age = _seconds(max_event_age)
        self.clock_skew = float(_seconds(clock_skew) or 0)
        if self.max_event_age is not None:
            if self.max_event_age < MIN_EVENT_AGE:
                raise ConfigurationError(
                    "max_event_age must be at least 15 minutes: the provider retries for "
                    "about 12.5 minutes and its retries must not be rejected"
                )
            if self.max_event_age + self.clock_skew >= self.retention:
                raise ConfigurationError(
                    "max_event_age must be shorter than retention, or a replay older than "
                    "the ledger's memory would be accepted"
                )
        if failure_threshold < 1:
            raise ConfigurationError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        if mode not in ("inline", "deferred"):
            raise ConfigurationError(f"mode must be 'inline' or 'deferred', not {mode!r}")
        self.deferred = mode == "deferred"
        if on_store_error not in ("fail_closed", "fail_open"):
            raise ConfigurationError(
                f"on_store_error must be 'fail_closed' or 'fail_open', not {on_store_error!r}"
            )
        #: Opt-in: with the ledger down, run handlers without dedup (duplicates possible)
        #: rather than answer 503.
        self.fail_open = on_store_error == "fail_open"
        # A registry of its own, or one shared with an owner (a Flask extension's, say).
        self.registry = registry if registry is not None else Registry()
        self._shared = shared_registry if include_shared else None
        self.clock = clock
        self.prune_interval = 3600.0
        self._next_prune = 0.0
        self.on = self.registry.on
        self.on_error = self.registry.on_error

    def __repr__(self) -> str:
        ids = ", ".join(s.id for s in self.verifier.secrets)
        return f"Webhooks(path={self.path!r}, store={type(self.store).__name__}, secrets=[{ids}])"

    # Handlers -----------------------------------------------------------------------

    def routes(self, name: str) -> tuple[HandlerSpec, ...]:
        """Return the handlers a delivery of ``name`` runs, in order."""
        own, own_any = self.registry.lookup(name)
        if self._shared is None:
            return own + own_any
        shared, shared_any = self._shared.lookup(name)
        return own + shared + own_any + shared_any

    def _error_hooks(self) -> tuple[ErrorHook, ...]:
        hooks = self.registry.error_hooks
        return hooks + self._shared.error_hooks if self._shared is not None else hooks

    def _report(self, exc: Exception, event: Event, delivery: Delivery) -> None:
        logger.error(
            "handler for %s raised (delivery %r, attempt %d)",
            delivery.event,
            delivery.id,
            delivery.attempt,
            exc_info=exc,
        )
        for hook in self._error_hooks():
            try:
                result = hook(exc, event, delivery)
                if asyncio.iscoroutine(result):
                    _run_coroutine(result)
            except Exception:
                logger.exception("error hook %r raised", hook)

    def replay(self, key: str) -> bool:
        """Put a failed or dead record back to pending for a worker; return whether it did."""
        return self.store.replay(key, now=self.clock())

    # Sync driver --------------------------------------------------------------------

    def handle(self, method: str, headers: Headers, body: bytes) -> Response:
        """Answer one request, blocking (for WSGI and plain code)."""
        return self._drive(flow(self, method, headers, body, self.clock()))

    def _drive(
        self, gen: Generator[Command, Any, Response], command: Command | None = None
    ) -> Response:
        """Perform ``gen``'s commands (from ``command`` if given) until it answers."""
        try:
            if command is None:
                command = next(gen)
            while True:
                try:
                    result = self._perform(command)
                except StoreUnavailable as exc:
                    command = gen.throw(exc)
                except Exception as exc:  # a store bug must still fail closed
                    logger.exception("ledger store raised")
                    command = gen.throw(StoreUnavailable(str(exc)))
                else:
                    command = gen.send(result)
        except StopIteration as stop:
            response: Response = stop.value
            return response

    def _perform(self, command: Command) -> Any:
        store, now = self.store, self.clock()
        if isinstance(command, Lease):
            return store.claim(command.entry, now=now, lease=self.lease, defer=command.defer)
        if isinstance(command, Dispatch):
            return self._dispatch(command)
        if isinstance(command, Fail):
            return store.fail(
                command.key, command.token, command.error, now=now, **_settle(command, now)
            )
        if isinstance(command, RecordFailure):
            return store.record_failure(command.limit)
        return store.prune(command.before)

    def _dispatch(self, command: Dispatch) -> Exception | None:
        event, delivery, store = command.event, command.delivery, self.store
        # Fail-open runs (ledger=False) have no record: no transaction, no done mark.
        unit = store.transaction() if command.ledger else nullcontext()
        try:
            with unit as tx:
                if tx is not None:
                    delivery = replace(delivery, transaction=tx)
                for func, wants_delivery, is_async in command.handlers:
                    result = func(event, delivery) if wants_delivery else func(event)
                    if is_async or asyncio.iscoroutine(result):
                        _run_coroutine(result)
                if command.ledger and not self._complete(command):
                    raise LeaseLost("lease expired while the handlers ran")
        except LeaseLost as exc:
            return exc
        except StoreUnavailable:
            raise
        except Exception as exc:
            self._report(exc, event, delivery)
            return exc
        return None

    def _complete(self, command: Dispatch) -> bool:
        deadline = _settle_deadline(self, command)
        while True:
            try:
                return self.store.complete(command.delivery.key, command.token, now=self.clock())
            except StoreUnavailable:
                if time.monotonic() + _SETTLE_PAUSE > deadline:
                    raise
                time.sleep(_SETTLE_PAUSE)

    # Async driver -------------------------------------------------------------------

    async def handle_async(self, method: str, headers: Headers, body: bytes) -> Response:
        """Answer one request without blocking the event loop (for ASGI)."""
        return await self._adrive(flow(self, method, headers, body, self.clock()))

    async def _adrive(self, gen: Generator[Command, Any, Response]) -> Response:
        """Async twin of :meth:`_drive`."""
        try:
            command = next(gen)
            while True:
                if isinstance(command, Lease) and self._in_one_thread(command):
                    return await asyncio.to_thread(self._drive, gen, command)
                try:
                    result = await self._perform_async(command)
                except StoreUnavailable as exc:
                    command = gen.throw(exc)
                except Exception as exc:
                    logger.exception("ledger store raised")
                    command = gen.throw(StoreUnavailable(str(exc)))
                else:
                    command = gen.send(result)
        except StopIteration as stop:
            response: Response = stop.value
            return response

    def _in_one_thread(self, lease: Lease) -> bool:
        """Tell whether the rest of a delivery is cheaper run by the sync driver in a thread."""
        if self.store.native_async:
            return False
        return not any(h.is_async for h in self.routes(lease.entry.event or ""))

    async def _perform_async(self, command: Command) -> Any:
        store, now = self.store, self.clock()
        if isinstance(command, Lease):
            return await store.aclaim(command.entry, now=now, lease=self.lease, defer=command.defer)
        if isinstance(command, Dispatch):
            return await self._dispatch_async(command)
        if isinstance(command, Fail):
            return await store.afail(
                command.key, command.token, command.error, now=now, **_settle(command, now)
            )
        if isinstance(command, RecordFailure):
            return await store.arecord_failure(command.limit)
        return await store.aprune(command.before)

    async def _acomplete(self, command: Dispatch) -> bool:
        deadline = _settle_deadline(self, command)
        while True:
            try:
                key = command.delivery.key
                return await self.store.acomplete(key, command.token, now=self.clock())
            except StoreUnavailable:
                if time.monotonic() + _SETTLE_PAUSE > deadline:
                    raise
                await asyncio.sleep(_SETTLE_PAUSE)

    async def _dispatch_async(self, command: Dispatch) -> Exception | None:
        store = self.store
        native = store.async_transactions and all(h.is_async for h in command.handlers)
        if not command.ledger or (store.transactional and not native):
            # A thread-bound transaction (Django's), or sync handlers, which need a sync
            # connection as delivery.transaction: handlers and complete share a thread.
            return await asyncio.to_thread(self._dispatch, command)
        event, delivery = command.event, command.delivery
        try:
            async with store.atransaction() as tx:
                if tx is not None:
                    delivery = replace(delivery, transaction=tx)
                for func, wants_delivery, is_async in command.handlers:
                    args = (event, delivery) if wants_delivery else (event,)
                    if is_async:
                        await func(*args)
                    else:
                        # A sync handler may block; keep it off the event loop.
                        result = await asyncio.to_thread(func, *args)
                        if asyncio.iscoroutine(result):
                            await result
                if not await self._acomplete(command):
                    raise LeaseLost("lease expired while the handlers ran")
        except LeaseLost as exc:
            return exc
        except StoreUnavailable:
            raise
        except Exception as exc:
            await asyncio.to_thread(self._report, exc, event, delivery)
            return exc
        return None

    def close(self) -> None:
        """Close the store's connections."""
        self.store.close()


_SETTLE_PAUSE = 0.5


def _settle_deadline(hooks: Webhooks, command: Dispatch) -> float:
    """Return until when (monotonic) a done mark may be retried through an outage.

    The handlers already ran: retrying the mark while the lease is ours beats running
    them again after it expires. Not with a transaction, which the outage has lost.
    """
    if command.settle_until is None or hooks.store.transactional:
        return 0.0
    return time.monotonic() + command.settle_until - hooks.clock()


def _settle(command: Fail, now: float) -> dict[str, Any]:
    retry_at = None if command.retry_in is None else now + command.retry_in
    return {"dead": command.dead, "retry_at": retry_at}


def _run_coroutine(coro: Any) -> Any:
    """Run an async handler from sync code, even when this thread already has a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="gptimg-webhooks-handler")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
