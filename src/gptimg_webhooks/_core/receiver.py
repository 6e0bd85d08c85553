"""The receiver: configuration, handlers, and the request path, top to bottom.

A request goes through :func:`~gptimg_webhooks._core.protocol.verify_request` (pure),
then the ledger (claim or enqueue), then :func:`~gptimg_webhooks._core.runner.execute`
under a reply deadline, then the answer. :meth:`Webhooks.handle` is that path blocking
(WSGI, plain code); :meth:`Webhooks.handle_async` is the same path for ASGI. The
decisions both make are shared functions; only the waiting differs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from . import strictjson
from .accounts import Account, AccountResolver, Accounts, Endpoint, UnknownEndpoint
from .errors import (
    ConfigurationError,
    DeliveryInProgress,
    HandlerFailed,
    InvalidPayload,
    StoreUnavailable,
    WebhookError,
)
from .events import Event, parse_event
from .handlers import Delivery, HandlerSpec, Registry
from .ledger import Claim, ClaimStatus, Record, Store, open_url
from .protocol import (
    DEAD,
    DUPLICATE,
    FAILED_ACCEPTED,
    IGNORED,
    PROCESSED,
    QUEUED,
    REJECTED_ACCEPTED,
    RUNNING,
    SIGNED_REJECTIONS,
    UNRECORDED,
    Headers,
    Limits,
    Response,
    Verified,
    collect_headers,
    error_response,
    verify_request,
)
from .runner import (
    Backoff,
    Keeper,
    Result,
    Settlement,
    aexecute,
    asettle_failure,
    execute,
    run_coroutine,
    settle_failure,
    settlement,
)
from .signature import Match, Verifier, parse_secrets

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
#: The provider disables an endpoint at 8 consecutive failed attempts. The receiver gives
#: at most 5 non-2xx answers in a row to verified deliveries; the 6th is a 2xx. That
#: leaves 2 for failures it cannot see (a proxy's 502, a crash mid-request).
DEFAULT_FAILURE_THRESHOLD = 5
PROVIDER_FAILURE_LIMIT = 8
#: How long a claim holds a delivery without renewal; runners renew it every third.
DEFAULT_LEASE = 120.0
#: Answer within this, under the provider's 5 s timeout; slower handlers go on behind.
DEFAULT_REPLY_DEADLINE = 4.0
PROVIDER_TIMEOUT = 5.0
#: The provider's last retry comes about 12.5 minutes after the first attempt.
MIN_EVENT_AGE = 15 * 60.0

#: Handlers registered with the module-level :func:`on`; every receiver runs them
#: after its own, unless built with ``include_shared=False``.
shared_registry = Registry()

#: A record's secret was verified when it was received; which one is not kept.
RECORDED = Match(index=-1, id="recorded")


def _seconds(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


class _Handoff:
    """Who settles a run: the request (answered after it) or the run itself (answered before)."""

    __slots__ = ("_lock", "delivery", "detached", "finished")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delivery: Delivery | None = None
        self.detached = False
        self.finished = False

    def arm(self, delivery: Delivery) -> None:
        """The delivery is recorded and leased: from now on it may be answered early."""
        with self._lock:
            self.delivery = delivery

    def detach(self) -> bool:
        """Answer before the run ends; False when it ended meanwhile or is not recorded yet."""
        with self._lock:
            if not self.finished and self.delivery is not None:
                self.detached = True
            return self.detached

    def finish(self) -> bool:
        """Mark the run ended; return whether the request had answered already."""
        with self._lock:
            self.finished = True
            return self.detached


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
        failed_retention: float | timedelta | None = None,
        max_event_age: float | timedelta | None = None,
        clock_skew: float | timedelta = 300.0,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        reply_deadline: float | timedelta | None = DEFAULT_REPLY_DEADLINE,
        mode: Literal["inline", "deferred"] = "inline",
        sweep: bool = True,
        sweep_interval: float | timedelta = 30.0,
        backoff: Backoff | None = None,
        on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
        include_shared: bool = True,
        registry: Registry | None = None,
        accounts: Sequence[Account] | AccountResolver | None = None,
        account_cache: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not path.startswith("/"):
            raise ConfigurationError(f"path must start with '/': {path!r}")
        #: Several accounts, each at ``<path>/<name>``: see :class:`Account`.
        self.accounts = Accounts(path, accounts, account_cache) if accounts is not None else None
        self._default: Endpoint | None = None
        if self.accounts is None or secret is not None:
            self.verifier = Verifier(parse_secrets(secret))
            self._default = Endpoint(self.verifier, "", f"guard:{path}")
        if store is None or isinstance(store, str):
            store = open_url(store or os.environ.get(STORE_ENV) or DEFAULT_STORE)
        self.store: Store = store
        self.path = path
        if max_body_size <= 0:
            raise ConfigurationError("max_body_size must be positive")
        self.max_body_size = max_body_size
        self.lease = float(_seconds(lease) or 0)
        self.retention = float(_seconds(retention) or 0)
        if self.lease <= 0 or self.retention <= 0:
            raise ConfigurationError("lease and retention must be positive")
        self.failed_retention = _seconds(failed_retention)
        if self.failed_retention is not None and self.failed_retention < self.retention:
            raise ConfigurationError("failed_retention, if set, must be at least retention")
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
        if not 1 <= failure_threshold < PROVIDER_FAILURE_LIMIT:
            raise ConfigurationError(
                f"failure_threshold must be from 1 to {PROVIDER_FAILURE_LIMIT - 1}: the "
                f"provider disables the endpoint at {PROVIDER_FAILURE_LIMIT} failures in a row"
            )
        self.failure_threshold = failure_threshold
        deadline = _seconds(reply_deadline)
        if deadline is not None and not 0 < deadline < PROVIDER_TIMEOUT:
            raise ConfigurationError(
                "reply_deadline must be between 0 and the provider's 5 s timeout (or None)"
            )
        self.reply_deadline = deadline
        if mode not in ("inline", "deferred"):
            raise ConfigurationError(f"mode must be 'inline' or 'deferred', not {mode!r}")
        self.deferred = mode == "deferred"
        self.sweep = sweep
        self.sweep_interval = float(_seconds(sweep_interval) or 0)
        if self.sweep_interval <= 0:
            raise ConfigurationError("sweep_interval must be positive")
        self.sweep_batch = 20
        self.prune_interval = 3600.0
        self.backoff = backoff or Backoff()
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
        self.on = self.registry.on
        self.on_error = self.registry.on_error
        self.keeper = Keeper(self)
        self._limits_cache: dict[Endpoint, Limits] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._background: set[asyncio.Future[Response]] = set()

    def __repr__(self) -> str:
        if self._default is None:
            return f"Webhooks(path={self.path!r}, store={type(self.store).__name__}, accounts)"
        ids = ", ".join(s.id for s in self._default.verifier.secrets)
        return f"Webhooks(path={self.path!r}, store={type(self.store).__name__}, secrets=[{ids}])"

    @property
    def guard_counter(self) -> str:
        """Name the ledger counter of this endpoint's consecutive non-2xx answers."""
        return f"guard:{self.path}"

    @property
    def guard_limit(self) -> int:
        """The count at which the guard answers 2xx instead (``failure_threshold`` + 1)."""
        return self.failure_threshold + 1

    def counter_for(self, key: str) -> str:
        """Name the guard counter of the endpoint a record ``key`` came through."""
        account = _account_of(key)
        return self.guard_counter if account is None else f"guard:account:{account}"

    def guard_trips(self, counter: str) -> bool:
        """Count one more non-2xx answer to a verified delivery; True: answer 2xx instead.

        The count lives in the ledger, shared by every process, and includes the 503s
        this process gave while the ledger was down. A done mark resets it.
        """
        by = 1 + self.keeper.take_unrecorded(counter)
        try:
            return self.store.bump(counter, self.guard_limit, by)
        except StoreUnavailable:
            self.keeper.unrecorded_failure(counter, by)
            return False

    async def aguard_trips(self, counter: str) -> bool:
        """Async twin of :meth:`guard_trips`."""
        by = 1 + self.keeper.take_unrecorded(counter)
        try:
            return await self.store.abump(counter, self.guard_limit, by)
        except StoreUnavailable:
            self.keeper.unrecorded_failure(counter, by)
            return False

    @property
    def limits(self) -> Limits:
        """Return what :func:`verify_request` checks requests against (no accounts)."""
        if self._default is None:
            raise ConfigurationError("this receiver serves accounts: see endpoint_for()")
        return self._limits(self._default)

    def _limits(self, endpoint: Endpoint) -> Limits:
        found = self._limits_cache.get(endpoint)
        if found is None:
            found = Limits(
                endpoint.verifier, self.max_body_size, self.max_event_age, self.clock_skew
            )
            if len(self._limits_cache) > 4096:  # a resolver's accounts come and go
                self._limits_cache.clear()
            self._limits_cache[endpoint] = found
        return found

    def serves(self, path: str) -> bool:
        """Tell whether a request ``path`` is this receiver's (the adapters route with it)."""
        if path == self.path and self._default is not None:
            return True
        return self.accounts is not None and self.accounts.serves(path)

    def endpoint_for(self, path: str | None) -> Endpoint:
        """Resolve which account (secrets, guard, ledger space) a request path is for."""
        if self.accounts is not None and path is not None and path != self.path:
            return self.accounts.endpoint(path)
        if self._default is None:
            raise UnknownEndpoint("no webhook endpoint here")
        return self._default

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

    def report(self, exc: BaseException, event: Event, delivery: Delivery) -> None:
        """Log a handler's exception and call the error hooks."""
        logger.error(
            "handler for %s raised (delivery %r, attempt %d)",
            delivery.event,
            delivery.id,
            delivery.attempt,
            exc_info=exc,
            extra={
                "delivery_id": delivery.id,
                "event": delivery.event,
                "attempt": delivery.attempt,
            },
        )
        for hook in self._error_hooks():
            try:
                result = hook(exc, event, delivery)
                if asyncio.iscoroutine(result):
                    run_coroutine(result)
            except Exception:
                logger.exception("error hook %r raised", hook)

    # The request path, blocking ------------------------------------------------------

    def handle(
        self, method: str, headers: Headers, body: bytes, *, path: str | None = None
    ) -> Response:
        """Answer one request, blocking (for WSGI and plain code).

        ``path`` picks the account when the receiver serves several (``accounts=``).
        """
        return self._answered(self._handle(method, headers, body, path))

    def _handle(self, method: str, headers: Headers, body: bytes, path: str | None) -> Response:
        started = time.monotonic()
        self.keeper.start()
        endpoint = None
        try:
            endpoint = self.endpoint_for(path)
            verified = verify_request(self._limits(endpoint), method, headers, body, self.clock())
        except WebhookError as exc:
            return self._rejected(exc, headers, endpoint)
        if endpoint.namespace:
            verified = _namespaced(verified, endpoint)
        if self.reply_deadline is None:
            return self.handle_verified(verified)
        handoff = _Handoff()
        future = self._executor().submit(self._pooled, verified, handoff)
        return _within(future.result, handoff, started, self.reply_deadline)

    def _pooled(self, verified: Verified, handoff: _Handoff | None) -> Response:
        try:
            return self.handle_verified(verified, handoff)
        finally:
            self.store.close_thread()

    def _answered(self, response: Response) -> Response:
        if response.status < 300:
            # A 2xx resets the provider's count: 503s it followed no longer matter.
            self.keeper.clear_unrecorded()
        return response

    def handle_verified(self, verified: Verified, handoff: _Handoff | None = None) -> Response:
        """Record and run an already verified delivery, blocking."""
        try:
            try:
                if self.deferred:
                    claim = self.store.enqueue(verified.entry)
                else:
                    claim = self.store.claim(verified.entry, lease=self.lease)
            except Exception as exc:  # a store's bug fails closed like an outage
                return self._store_down(verified, _as_outage(exc))
            if claim.status is not ClaimStatus.CLAIMED:
                return self._unclaimed(claim, verified)
            delivery = self._delivery(verified, claim.attempt)
            if handoff is not None:
                handoff.arm(delivery)
            return self._run_and_settle(verified.event, delivery, claim.token, handoff)
        except Exception as exc:  # a bug of ours (or a store's): answer, never raise
            return _internal(verified.delivery_id, exc)

    def _rejected(
        self, exc: WebhookError, headers: Headers, endpoint: Endpoint | None = None
    ) -> Response:
        _log_rejection(exc, headers)
        if not isinstance(exc, SIGNED_REJECTIONS) or endpoint is None:
            return error_response(exc)
        try:
            entry = getattr(exc, "entry", None)
            if entry is not None:  # keep the signed raw body for inspection
                entry = replace(entry, key=endpoint.namespace + entry.key)
                claim = self.store.claim(entry, lease=self.lease)
                if claim.status is ClaimStatus.CLAIMED:
                    self.store.fail(entry.key, claim.token, f"{exc.code}: {exc}")
        except StoreUnavailable:
            logger.warning("could not keep the refused body: the ledger is unavailable")
        if self.guard_trips(endpoint.counter):
            return _guard_rejected(exc)
        return error_response(exc)

    def _store_down(self, verified: Verified, exc: StoreUnavailable) -> Response:
        if not self.fail_open:
            logger.error(
                "ledger unavailable, answering 503 (delivery %r): %s", verified.delivery_id, exc
            )
            self.keeper.unrecorded_failure(self.counter_for(verified.entry.key))
            return error_response(exc)
        logger.error(
            "ledger unavailable, running handlers WITHOUT dedup (fail-open; delivery %r): %s",
            verified.delivery_id,
            exc,
        )
        delivery = self._delivery(verified, 1)
        event = verified.event
        try:
            for func, wants_delivery, is_async in self.routes(event.event):
                result = func(event, delivery) if wants_delivery else func(event)
                if is_async or asyncio.iscoroutine(result):
                    run_coroutine(result)
        except Exception as error:
            self.report(error, event, delivery)
            return error_response(HandlerFailed(f"handler raised {type(error).__name__}"))
        return UNRECORDED

    def _unclaimed(self, claim: Claim, verified: Verified) -> Response:
        answer = _claim_answer(claim, self.deferred)
        if answer is not None:
            if answer is DUPLICATE:
                logger.info(
                    "duplicate of %s (delivery %r): already done",
                    verified.entry.key[:12],
                    verified.delivery_id,
                )
            return answer
        return _in_progress(self.guard_trips(self.counter_for(verified.entry.key)))

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=64, thread_name_prefix="gptimg-webhooks-run"
            )
        return pool

    def _run_and_settle(
        self, event: Event, delivery: Delivery, token: str, handoff: _Handoff | None
    ) -> Response:
        result = execute(self, event, delivery, token)
        detached = handoff is not None and handoff.finish()
        if result.outcome != "failed":
            return _result_answer(result)
        error = _error_text(result)
        plan = settlement(self.backoff, delivery.attempt, provider_retries=not detached)
        if plan.op == "fail" and self.guard_trips(self.counter_for(delivery.key)):
            plan = settlement(self.backoff, delivery.attempt, provider_retries=False)
        settle_failure(self, delivery.key, token, error, plan)
        return _failure_answer(result, plan, delivery, detached)

    # The request path, async ---------------------------------------------------------

    async def handle_async(
        self, method: str, headers: Headers, body: bytes, *, path: str | None = None
    ) -> Response:
        """Answer one request without blocking the event loop (for ASGI)."""
        return self._answered(await self._handle_async(method, headers, body, path))

    async def _handle_async(
        self, method: str, headers: Headers, body: bytes, path: str | None
    ) -> Response:
        started = time.monotonic()
        self.keeper.start()
        endpoint = None
        try:
            endpoint = self.endpoint_for(path)
            verified = verify_request(self._limits(endpoint), method, headers, body, self.clock())
        except WebhookError as exc:
            if isinstance(exc, SIGNED_REJECTIONS):
                return await asyncio.to_thread(self._rejected, exc, headers, endpoint)
            _log_rejection(exc, headers)
            return error_response(exc)
        if endpoint.namespace:
            verified = _namespaced(verified, endpoint)
        store = self.store
        if not store.native_async and not any(
            h.is_async for h in self.routes(verified.event.event)
        ):
            # A blocking ledger and sync handlers: the rest costs one thread hop.
            if self.reply_deadline is None:
                return await asyncio.to_thread(self._pooled, verified, None)
            handoff = _Handoff()
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(None, self._pooled, verified, handoff)
            return await _awithin(future, handoff, started, self.reply_deadline, self)
        try:
            try:
                if self.deferred:
                    claim = await store.aenqueue(verified.entry)
                else:
                    claim = await store.aclaim(verified.entry, lease=self.lease)
            except Exception as exc:  # a store's bug fails closed like an outage
                return await asyncio.to_thread(self._store_down, verified, _as_outage(exc))
            if claim.status is not ClaimStatus.CLAIMED:
                answer = _claim_answer(claim, self.deferred)
                if answer is not None:
                    return answer
                return await asyncio.to_thread(self._unclaimed, claim, verified)
            delivery = self._delivery(verified, claim.attempt)
            if self.reply_deadline is None:
                return await self._arun_and_settle(verified.event, delivery, claim.token, None)
            handoff = _Handoff()
            handoff.arm(delivery)
            task = asyncio.ensure_future(
                self._arun_and_settle(verified.event, delivery, claim.token, handoff)
            )
            return await _awithin(task, handoff, started, self.reply_deadline, self)
        except Exception as exc:
            return _internal(verified.delivery_id, exc)

    async def _arun_and_settle(
        self, event: Event, delivery: Delivery, token: str, handoff: _Handoff | None
    ) -> Response:
        result = await aexecute(self, event, delivery, token)
        detached = handoff is not None and handoff.finish()
        if result.outcome != "failed":
            return _result_answer(result)
        error = _error_text(result)
        plan = settlement(self.backoff, delivery.attempt, provider_retries=not detached)
        if plan.op == "fail" and await self.aguard_trips(self.counter_for(delivery.key)):
            plan = settlement(self.backoff, delivery.attempt, provider_retries=False)
        await asettle_failure(self, delivery.key, token, error, plan)
        return _failure_answer(result, plan, delivery, detached)

    # Runners: recovery, replay -------------------------------------------------------

    def _delivery(self, verified: Verified, attempt: int) -> Delivery:
        return Delivery(
            verified.delivery_id,
            verified.event.event,
            verified.entry.key,
            verified.match,
            self.clock(),
            attempt,
            account=_account_of(verified.entry.key),
        )

    def run_record(self, record: Record, claim: Claim, *, backoff: Backoff | None = None) -> str:
        """Run a leased record from its stored body and settle it as a runner; return the outcome.

        A failure is retried after ``backoff`` (the receiver's by default), or buried
        once out of attempts. Outcomes: ``processed``, ``ignored``, ``handler_failed``
        (retry scheduled), ``dead``, ``lease_lost`` or ``store_unavailable``.
        """
        event = _stored_event(self, record, claim)
        if event is None:
            return "dead"
        delivery = _stored_delivery(record, event, claim)
        result = execute(self, event, delivery, claim.token)
        if result.outcome != "failed":
            return result.outcome
        plan = settlement(backoff or self.backoff, claim.attempt, provider_retries=False)
        settle_failure(self, record.key, claim.token, _error_text(result), plan)
        return "dead" if plan.op == "bury" else "handler_failed"

    async def arun_record(
        self, record: Record, claim: Claim, *, backoff: Backoff | None = None
    ) -> str:
        """Async twin of :meth:`run_record` (workers)."""
        event = await asyncio.to_thread(_stored_event, self, record, claim)
        if event is None:
            return "dead"
        delivery = _stored_delivery(record, event, claim)
        result = await aexecute(self, event, delivery, claim.token)
        if result.outcome != "failed":
            return result.outcome
        plan = settlement(backoff or self.backoff, claim.attempt, provider_retries=False)
        await asettle_failure(self, record.key, claim.token, _error_text(result), plan)
        return "dead" if plan.op == "bury" else "handler_failed"

    def recover(self, *, limit: int = 20) -> dict[str, str]:
        """Run records that are due (pending, or abandoned by a dead runner) now; blocking.

        The receiver's recovery sweep calls this off the request path in inline mode.
        Return each record's outcome by key.
        """
        outcomes = {}
        for record, claim in self.store.lease_due(lease=self.lease, limit=limit):
            outcomes[record.key] = self.run_record(record, claim)
        return outcomes

    def rerun(self, key: str) -> str:
        """Run a failed or dead record's handlers again, now; a record that fails again is dead.

        The one replay path: the CLI's ``ledger replay --app``, the Django admin action
        and the management command all call this. Outcomes as :meth:`run_record`, plus
        ``not_replayable`` when the record is neither failed nor dead.
        """
        leased = self.store.rerun(key, lease=self.lease)
        if leased is None:
            return "not_replayable"
        return self.run_record(*leased, backoff=Backoff(max_attempts=1))

    def replay(self, key: str) -> bool:
        """Put a failed or dead record back to pending for a runner; return whether it did."""
        return self.store.replay(key)

    def start(self) -> None:
        """Start this process's background keeper now, rather than on the first request.

        It renews leases, lands late done marks, prunes, and (inline mode) runs the
        recovery sweep. Safe to call more than once, and after a fork.
        """
        self.keeper.start()

    def close(self) -> None:
        """Stop the background keeper and close the store's connections."""
        self.keeper.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self.store.close()


# Shared decisions ----------------------------------------------------------------------


def _within(
    result: Callable[..., Response], handoff: _Handoff, started: float, deadline: float
) -> Response:
    """Wait for a blocking run until the reply deadline; then answer 202 if it was recorded."""
    try:
        return result(timeout=max(0.0, deadline - (time.monotonic() - started)))
    except concurrent.futures.TimeoutError:
        if handoff.detach():
            _log_detached(handoff.delivery)
            return RUNNING
        return result()  # not recorded yet: never answer 2xx for what may be lost


async def _awithin(
    future: asyncio.Future[Response],
    handoff: _Handoff,
    started: float,
    deadline: float,
    hooks: Webhooks,
) -> Response:
    """Async twin of :func:`_within`."""
    remaining = max(0.0, deadline - (time.monotonic() - started))
    try:
        return await asyncio.wait_for(asyncio.shield(future), remaining)
    except asyncio.TimeoutError:
        if handoff.detach():
            if isinstance(future, asyncio.Task):
                # Keep a reference: the loop holds tasks only weakly.
                hooks._background.add(future)
                future.add_done_callback(hooks._background.discard)
            _log_detached(handoff.delivery)
            return RUNNING
        return await future


def _claim_answer(claim: Claim, deferred: bool) -> Response | None:
    """Answer a delivery the ledger did not hand to us; None: in progress (guarded)."""
    status = claim.status
    if status is ClaimStatus.DONE:
        return DUPLICATE
    if status is ClaimStatus.DEAD:
        return DEAD
    if status is ClaimStatus.PENDING or deferred:
        return QUEUED
    return None


def _in_progress(tripped: bool) -> Response:
    if tripped:
        logger.error("a copy is still in progress; answering 2xx to keep the endpoint enabled")
        return RUNNING
    exc = DeliveryInProgress("a copy of this delivery is being processed; retry later")
    _log_rejection(exc)
    return error_response(exc)


def _result_answer(result: Result) -> Response:
    if result.outcome == "processed":
        return PROCESSED
    if result.outcome == "ignored":
        return IGNORED
    error = result.error
    assert isinstance(error, WebhookError)
    _log_rejection(error)
    return error_response(error)


def _failure_answer(
    result: Result, plan: Settlement, delivery: Delivery, detached: bool
) -> Response:
    if plan.op == "fail":
        error = result.error
        return error_response(HandlerFailed(f"handler raised {type(error).__name__}"))
    if detached:  # answered 202 already: the provider will not retry
        logger.warning(
            "handler for %s failed after the reply deadline (delivery %r); a runner retries "
            "it from the ledger",
            delivery.event,
            delivery.id,
        )
    else:
        logger.error(
            "handler failed for %s (delivery %r); answering 2xx to keep the endpoint from "
            "auto-disable: a runner retries it from the ledger",
            delivery.event,
            delivery.id,
        )
    return FAILED_ACCEPTED


def _guard_rejected(exc: WebhookError) -> Response:
    logger.error(
        "refused a signed delivery (%s) but answering 2xx to keep the endpoint from auto-disable",
        exc.code,
    )
    return REJECTED_ACCEPTED


def _error_text(result: Result) -> str:
    error = result.error
    return "" if error is None else f"{type(error).__name__}: {error}"[:2000]


def _account_of(key: str) -> str | None:
    """Return the account a record key is namespaced under (``name:<sha256>``), if any."""
    head, sep, _ = key.rpartition(":")
    return head if sep and head else None


def _namespaced(verified: Verified, endpoint: Endpoint) -> Verified:
    entry = replace(verified.entry, key=endpoint.namespace + verified.entry.key)
    return replace(verified, entry=entry)


def _stored_delivery(record: Record, event: Event, claim: Claim) -> Delivery:
    account = _account_of(record.key)
    return Delivery(
        record.delivery_id,
        event.event,
        record.key,
        RECORDED,
        record.created_at,
        claim.attempt,
        account=account,
    )


def _stored_event(hooks: Webhooks, record: Record, claim: Claim) -> Event | None:
    """Parse a leased record's body; bury it when that cannot work (no retry would help)."""
    try:
        if record.body is None:
            raise InvalidPayload("the record has no body to process")
        return parse_event(strictjson.loads(record.body))
    except InvalidPayload as exc:
        hooks.store.bury(record.key, claim.token, f"invalid_payload: {exc}")
        return None


def _log_rejection(exc: WebhookError, headers: Headers | None = None) -> None:
    # Expected rejections: WARNING at most, never the body. The delivery id is unsigned:
    # only ever logged with %r, and cut short.
    delivery_id = ""
    if headers is not None:
        found = collect_headers(headers)[1]
        delivery_id = found[0][:80] if found else ""
    logger.warning(
        "rejected %s: %s (delivery %r)",
        exc.code,
        exc,
        delivery_id,
        extra={"delivery_id": delivery_id, "outcome": exc.code},
    )


def _log_detached(delivery: Delivery | None) -> None:
    assert delivery is not None
    logger.warning(
        "handlers for %s still run at the reply deadline (delivery %r); answered 202, "
        "they go on holding the lease",
        delivery.event,
        delivery.id,
    )


def _as_outage(exc: Exception) -> StoreUnavailable:
    if isinstance(exc, StoreUnavailable):
        return exc
    logger.error("the ledger store raised %s; failing closed", type(exc).__name__, exc_info=exc)
    return StoreUnavailable(f"store raised {type(exc).__name__}")


def _internal(delivery_id: str, exc: BaseException) -> Response:
    logger.error("internal error (delivery %r)", delivery_id, exc_info=exc)
    return error_response(WebhookError(f"internal error: {type(exc).__name__}"))
