"""Run a leased delivery's handlers and settle its record.

One path for every runner: the inline receiver, its recovery sweep, workers and local
replays. :func:`execute` runs the handlers and the done mark in the store's transaction
while the :class:`Keeper` renews the lease in the background; :func:`settlement` says
what a failed run becomes (a pure decision), and the callers perform it.

The keeper is one daemon thread per receiver and process. It renews the leases of runs
under way, lands done marks that met a store outage (the handlers ran: their mark is
retried, holding the lease, never the handlers), hands back leases whose run could not
be settled, and, off the request path, prunes the ledger and (inline mode) runs the
recovery sweep: records left ``processing`` by a dead runner, once their lease runs
out, are run again from their stored body.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import LeaseLost, StoreUnavailable
from .events import Event
from .handlers import Delivery
from .handoff import process
from .ledger import FINISHED, State, Store

if TYPE_CHECKING:
    from .receiver import Webhooks

__all__ = ["Backoff", "Keeper", "Result", "aexecute", "execute", "run_coroutine"]

logger = logging.getLogger("gptimg_webhooks")


@dataclass(frozen=True, slots=True)
class Backoff:
    """A runner's retry policy: exponential delays, then dead after ``max_attempts``."""

    max_attempts: int = 5
    initial: float = 30.0
    factor: float = 4.0
    cap: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial < 0 or self.factor < 1 or self.cap < 0:
            raise ValueError(
                "Backoff needs max_attempts >= 1, initial >= 0, factor >= 1 and cap >= 0"
            )

    def delay(self, attempt: int) -> float | None:
        """Return the wait before the run after failed run ``attempt``; None: dead."""
        if attempt >= self.max_attempts:
            return None
        return float(min(self.cap, self.initial * self.factor ** max(attempt - 1, 0)))


@dataclass(frozen=True, slots=True)
class Result:
    """What one run came to.

    ``outcome``: ``processed``, ``ignored``, ``failed`` (a handler raised: ``error``),
    ``lease_lost`` (another runner took the record over) or ``store_unavailable``
    (nothing committed; the keeper hands the lease back once the store returns).
    """

    outcome: str
    error: BaseException | None = None


_PROCESSED = Result("processed")
_IGNORED = Result("ignored")


def run_coroutine(coro: Any) -> Any:
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


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _no_retry() -> bool:
    return True


_NULL = nullcontext()


# Phases of a run: a store error means an outage only in the store's own phases.
_OPEN, _HANDLERS, _MARK, _COMMIT = "open", "handlers", "mark", "commit"


def execute(
    hooks: Webhooks,
    event: Event,
    delivery: Delivery | Callable[[], Delivery],
    token: str,
    also: tuple[str, str] | None = None,
    key: str = "",
    *,
    answered: Callable[[], bool] = _no_retry,
) -> Result:
    """Run ``event``'s handlers and the done mark, in the store's transaction, blocking.

    ``also`` (key, token): a second record held for the same run (a generation's gate),
    marked done with the first. ``delivery`` may be a function that builds it, with
    ``key`` given: the request path builds it only for a handler that takes it, or for
    an error report. ``answered()``, asked if an outage ends the run: whether the
    provider has its answer already, so no retry of its will run the record again
    (always, for a runner; for a request, once it has answered early).
    """
    store = hooks.store
    if not key:
        assert isinstance(delivery, Delivery)
        key = delivery.key
    handlers = hooks.routes(event.event)
    keeper = hooks.keeper
    phase = _OPEN
    held = _hold(keeper, key, token, also)
    try:
        # A store without transactions: skip building and entering one per run.
        plain = type(store).transaction is _NO_TRANSACTION
        with _NULL if plain else store.transaction() as tx:
            phase = _HANDLERS
            run = None
            for func, wants_delivery, is_async in handlers:
                if wants_delivery:
                    if run is None:
                        run = _handed(delivery, tx)
                    result = func(event, run)
                else:
                    result = func(event)
                # None first: iscoroutine() pays an ABC check for every other type.
                if is_async or (result is not None and asyncio.iscoroutine(result)):
                    store.run_async(result)
            if tx is not None:
                store.check_transaction(tx)
            phase = _MARK
            if not store.complete(key, token, counter=hooks.counter_for(key)):
                raise LeaseLost("the lease was lost while the handlers ran")
            if also is not None and not store.complete(*also):
                raise LeaseLost("the generation's gate was lost while the handlers ran")
            phase = _COMMIT
    except LeaseLost as exc:
        return Result("lease_lost", exc)
    except StoreUnavailable as exc:
        if phase != _HANDLERS:
            return _outage(hooks, key, token, phase, exc, answered)
        hooks.report(exc, event, delivery_of(delivery))
        return Result("failed", exc)
    except Exception as exc:
        hooks.report(exc, event, delivery_of(delivery))
        return Result("failed", exc)
    finally:
        _release(keeper, key, held, also)
    return _PROCESSED if handlers else _IGNORED


def _hold(keeper: Keeper, key: str, token: str, also: tuple[str, str] | None) -> _Held:
    """Renew the run's lease (and its gate's, ``also``) in the background while it runs."""
    held = keeper.hold(key, token)
    if also is not None:
        keeper.hold(*also)
    return held


def _release(keeper: Keeper, key: str, held: _Held, also: tuple[str, str] | None) -> None:
    keeper.release(key, held)
    if also is not None:
        keeper.release(also[0], None, also[1])


def delivery_of(delivery: Delivery | Callable[[], Delivery]) -> Delivery:
    """Return ``delivery``, building it first when it is given as a function."""
    return delivery if type(delivery) is Delivery else delivery()  # type: ignore[operator]


def _handed(delivery: Delivery | Callable[[], Delivery], tx: Any) -> Delivery:
    """Return the delivery a handler gets: built now if it was put off, in ``tx``."""
    run = delivery_of(delivery)
    return run if tx is None else replace(run, transaction=tx)


async def aexecute(
    hooks: Webhooks,
    event: Event,
    delivery: Delivery | Callable[[], Delivery],
    token: str,
    also: tuple[str, str] | None = None,
    key: str = "",
    *,
    answered: Callable[[], bool] = _no_retry,
) -> Result:
    """Async twin of :func:`execute`: no thread waits unless a handler or the store needs one."""
    store = hooks.store
    if not key:
        assert isinstance(delivery, Delivery)
        key = delivery.key
    handlers = hooks.routes(event.event)
    if store.transactional and not (store.async_transactions and all(h.is_async for h in handlers)):
        # A thread-bound transaction (Django's), or sync handlers that need a sync
        # connection as delivery.transaction: handlers and the mark share one thread.
        return await hooks.run_threads.run(
            _execute_in_thread, hooks, event, delivery_of(delivery), token, also, answered
        )
    phase = _OPEN
    keeper = hooks.keeper
    held = _hold(keeper, key, token, also)
    try:
        plain = type(store).atransaction is _NO_ATRANSACTION
        async with _NULL if plain else store.atransaction() as tx:
            phase = _HANDLERS
            run = None
            for func, wants_delivery, is_async in handlers:
                if wants_delivery:
                    if run is None:
                        run = _handed(delivery, tx)
                    args: tuple[Any, ...] = (event, run)
                else:
                    args = (event,)
                if is_async:
                    await func(*args)
                else:
                    # A sync handler may block; keep it off the event loop.
                    result = await hooks.run_threads.run(func, *args)
                    if asyncio.iscoroutine(result):
                        await result
            if tx is not None:
                store.check_transaction(tx)
            phase = _MARK
            if not await store.acomplete(key, token, counter=hooks.counter_for(key)):
                raise LeaseLost("the lease was lost while the handlers ran")
            if also is not None and not await store.acomplete(*also):
                raise LeaseLost("the generation's gate was lost while the handlers ran")
            phase = _COMMIT
    except LeaseLost as exc:
        return Result("lease_lost", exc)
    except StoreUnavailable as exc:
        if phase != _HANDLERS:
            return _outage(hooks, key, token, phase, exc, answered)
        await hooks.run_threads.run(hooks.report, exc, event, delivery_of(delivery))
        return Result("failed", exc)
    except Exception as exc:
        await hooks.run_threads.run(hooks.report, exc, event, delivery_of(delivery))
        return Result("failed", exc)
    finally:
        _release(keeper, key, held, also)
    return _PROCESSED if handlers else _IGNORED


def _execute_in_thread(
    hooks: Webhooks,
    event: Event,
    delivery: Delivery,
    token: str,
    also: tuple[str, str] | None,
    answered: Callable[[], bool],
) -> Result:
    try:
        return execute(hooks, event, delivery, token, also, answered=answered)
    finally:
        hooks.store.close_thread()


def _outage(
    hooks: Webhooks,
    key: str,
    token: str,
    phase: str,
    exc: StoreUnavailable,
    answered: Callable[[], bool],
) -> Result:
    logger.error("ledger unavailable while settling %s: %s", key[:12], exc)
    if phase == _MARK and not hooks.store.transactional:
        # The handlers ran and their effects stand: land the mark later, holding the
        # lease, rather than let a copy run them again.
        hooks.keeper.settle_later(key, token, None, None)
        return Result("processed")
    # Nothing was committed (or the transaction went with the outage): hand the lease
    # back as soon as the store returns: failed, for the provider's retry to claim, or
    # queued again when no retry will come (a failed mark there would strand it).
    plan = _REQUEUE if answered() else _FAIL
    hooks.keeper.settle_later(key, token, f"store unavailable during the run ({phase})", plan)
    return Result("store_unavailable", exc)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a failed run becomes: ``op`` is ``fail``, ``retry`` (after ``delay``) or ``bury``."""

    op: str
    delay: float = 0.0


_FAIL, _REQUEUE = Settlement("fail"), Settlement("retry")


def settlement(backoff: Backoff, attempt: int, *, provider_retries: bool) -> Settlement:
    """Decide how to settle a failed run.

    When the provider will retry (it was answered non-2xx), the record is ``failed`` and
    its retry claims it. Otherwise a runner must: ``retry`` after the backoff, or
    ``bury`` once out of attempts.
    """
    if provider_retries:
        return _FAIL
    delay = backoff.delay(attempt)
    return Settlement("bury") if delay is None else Settlement("retry", delay)


def _perform(store: Store, key: str, token: str, error: str, plan: Settlement) -> bool:
    if plan.op == "retry":
        return store.retry(key, token, error, delay=plan.delay)
    if plan.op == "bury":
        return store.bury(key, token, error)
    return store.fail(key, token, error)


def settle_failure(hooks: Webhooks, key: str, token: str, error: str, plan: Settlement) -> bool:
    """Perform ``plan``; a store outage leaves it to the keeper. Return whether it landed."""
    try:
        return _perform(hooks.store, key, token, error, plan)
    except StoreUnavailable:
        hooks.keeper.settle_later(key, token, error, plan)
        return False


async def asettle_failure(
    hooks: Webhooks, key: str, token: str, error: str, plan: Settlement
) -> bool:
    """Async twin of :func:`settle_failure`."""
    store = hooks.store
    try:
        if plan.op == "retry":
            return await store.aretry(key, token, error, delay=plan.delay)
        if plan.op == "bury":
            return await store.abury(key, token, error)
        return await store.afail(key, token, error)
    except StoreUnavailable:
        hooks.keeper.settle_later(key, token, error, plan)
        return False


_NO_TRANSACTION = Store.transaction
_NO_ATRANSACTION = Store.atransaction


@dataclass(slots=True)
class _Held:
    token: str
    renewed: float


class Keeper:
    """The receiver's background thread: leases, late settles, the sweep and retention."""

    #: Seconds between the keeper's rounds (renewals are due every lease / 3).
    tick = 0.25

    def __init__(self, hooks: Webhooks) -> None:
        # Weak: a receiver nobody holds any more stops its keeper instead of living on.
        self._hooks = weakref.ref(hooks)
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        #: key -> (token, error, plan); a done mark has neither error nor plan
        self._later: dict[str, tuple[str, str | None, Settlement | None]] = {}
        self._unrecorded: dict[str, int] = {}
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._next_sweep = 0.0
        self._next_prune = 0.0
        self._sweeping = threading.Lock()

    @property
    def hooks(self) -> Webhooks:
        hooks = self._hooks()
        if hooks is None:
            raise ReferenceError("the receiver is gone")
        return hooks

    # Registration (any thread) ---------------------------------------------------

    def hold(self, key: str, token: str) -> _Held:
        """Start renewing ``key``'s lease in the background; :meth:`release` stops it."""
        if self._thread is None or self._pid != process[0]:
            self.start()
        held = _Held(token, time.monotonic())
        with self._lock:
            self._held[key] = held
        return held

    def release(self, key: str, held: _Held | None, token: str = "") -> None:
        """Stop renewing the lease :meth:`hold` registered (``held``, or by its token)."""
        with self._lock:
            found = self._held.get(key)
            if key in self._later:
                return  # a settle waits for the store: keep the lease until it lands
            if found is not None and (
                found is held or found.token == (token or (held and held.token))
            ):
                del self._held[key]

    def settle_later(
        self, key: str, token: str, error: str | None, plan: Settlement | None
    ) -> None:
        """Land a done mark (``plan`` None), or settle a failed run by ``plan``, later."""
        self.start()
        with self._lock:
            self._later[key] = (token, error, plan)
            self._held.setdefault(key, _Held(token, time.monotonic()))

    def unrecorded_failure(self, counter: str, n: int = 1) -> None:
        """Count non-2xx answers the ledger could not count (it was down)."""
        with self._lock:
            self._unrecorded[counter] = self._unrecorded.get(counter, 0) + n

    def take_unrecorded(self, counter: str) -> int:
        """Take a counter's uncounted failures, to add them to the ledger's count now."""
        if not self._unrecorded:
            return 0
        with self._lock:
            return self._unrecorded.pop(counter, 0)

    def clear_unrecorded(self) -> None:
        """Forget uncounted failures: a 2xx answer reset the provider's count."""
        if self._unrecorded:
            with self._lock:
                self._unrecorded.clear()

    def start(self) -> None:
        """Start the thread in this process if it is not running (after a fork too)."""
        if self._pid == process[0] and self._thread is not None:
            return
        with self._lock:
            if self._pid == process[0] and self._thread is not None:
                return
            self._pid = process[0] = os.getpid()
            self._held.clear()  # a parent's runs are not this child's
            self._later.clear()
            self._stop.clear()
            self._next_sweep = time.monotonic() + self.hooks.sweep_interval
            # Not in the middle of start-up's first requests.
            self._next_prune = time.monotonic() + min(60.0, self.hooks.prune_interval)
            self._thread = threading.Thread(
                target=_keep, args=(weakref.ref(self),), name="gptimg-webhooks-keeper", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (tests, shutdown)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None

    @property
    def pending_settles(self) -> int:
        """How many done marks or hand-backs wait for the store."""
        return len(self._later)

    # The loop (keeper thread) ----------------------------------------------------

    def _idle(self) -> bool:
        return not self._held and not self._later and not self._unrecorded

    def _round(self) -> None:
        hooks, store, now = self.hooks, self.hooks.store, time.monotonic()
        with self._lock:
            later = list(self._later.items())
            due = [(k, h) for k, h in self._held.items() if now - h.renewed >= hooks.lease / 3]
            unrecorded, self._unrecorded = self._unrecorded, {}
        try:
            for key, (token, error, plan) in later:
                self._settle(key, token, error, plan)
            for key, held in due:
                if key in self._later:
                    continue  # settled above, or still waiting for the store
                held.renewed = now
                if not store.renew(key, held.token, lease=hooks.lease):
                    logger.warning("lease on %s was lost while its handlers ran", key[:12])
                    with self._lock:
                        if self._held.get(key) is held:
                            del self._held[key]
            while unrecorded:
                counter, n = unrecorded.popitem()
                try:
                    store.bump(counter, hooks.guard_limit, by=n)
                except StoreUnavailable:
                    unrecorded[counter] = n
                    raise
        except StoreUnavailable as exc:
            logger.warning("ledger keeper: store unavailable (%s); will retry", exc)
            with self._lock:
                for counter, n in unrecorded.items():
                    self._unrecorded[counter] = self._unrecorded.get(counter, 0) + n
            return
        # Deferred mode sweeps only with a dispatcher: it re-dispatches lost pointers.
        if (
            hooks.sweep
            and (not hooks.deferred or hooks.dispatcher is not None)
            and (now >= self._next_sweep)
        ):
            self._next_sweep = now + hooks.sweep_interval
            if self._sweeping.acquire(blocking=False):
                threading.Thread(target=self._sweep, name="gptimg-webhooks-sweep").start()
        if now >= self._next_prune:
            self._next_prune = now + hooks.prune_interval
            self._prune()

    def _settle(self, key: str, token: str, error: str | None, plan: Settlement | None) -> None:
        store = self.hooks.store
        if plan is None:
            landed = store.complete(key, token, counter=self.hooks.counter_for(key))
            what = "done mark"
        else:
            landed = _perform(store, key, token, error or "", plan)
            what = f"{plan.op} mark"
        with self._lock:
            self._later.pop(key, None)
            held = self._held.get(key)
            if held is not None and held.token == token:
                del self._held[key]
        if landed:
            logger.info("%s for %s landed after a store outage", what, key[:12])
        else:
            # Only the double fault gets here: the outage outlasted the lease and
            # another runner took the record over.
            logger.error(
                "%s for %s was refused: the lease ran out during the outage", what, key[:12]
            )

    def _sweep(self) -> None:
        """Run records a dead runner left behind (and pending ones), from their bodies."""
        try:
            self.hooks.recover(limit=self.hooks.sweep_batch)
            self.hooks.store.close_thread()
        except StoreUnavailable as exc:
            logger.warning("recovery sweep: store unavailable (%s)", exc)
        except Exception:
            logger.exception("recovery sweep failed")
        finally:
            self._sweeping.release()

    def _prune(self) -> None:
        hooks = self.hooks
        try:
            count = hooks.store.prune(hooks.retention, (State.DONE,))
            if count:
                logger.info("pruned %d done record(s) older than the retention", count)
            if hooks.failed_retention is not None:
                states = tuple(s for s in FINISHED if s is not State.DONE)
                gone = hooks.store.prune(hooks.failed_retention, states)
                if gone:
                    logger.warning(
                        "pruned %d failed or dead record(s) older than failed_retention", gone
                    )
        except StoreUnavailable as exc:
            logger.warning("pruning the ledger failed (%s); will try again", exc)


def _keep(ref: weakref.ref[Keeper]) -> None:
    """The keeper thread: rounds until stopped, or until its receiver is gone."""
    while True:
        keeper = ref()
        if keeper is None or keeper._stop.is_set() or keeper._hooks() is None:
            return
        stop = keeper._stop
        # Idle: look less often; a round still runs the sweep and pruning on time.
        tick = Keeper.tick if not keeper._idle() else 4 * Keeper.tick
        try:
            keeper._round()
            keeper.hooks.store.close_thread()
        except ReferenceError:
            return
        except Exception:  # never let the keeper die: it holds everyone's leases
            logger.exception("ledger keeper round failed")
        del keeper
        if stop.wait(tick):
            return
