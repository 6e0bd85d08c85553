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
import re
import time
from _thread import allocate_lock
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

from . import strictjson
from .accounts import Account, AccountResolver, Accounts, Endpoint, UnknownEndpoint
from .errors import (
    ConfigurationError,
    DeliveryInProgress,
    HandlerFailed,
    InvalidPayload,
    InvalidSignature,
    StoreUnavailable,
    WebhookError,
)
from .events import Event, GenerationFailed, GenerationSucceeded, parse_event
from .handlers import Delivery, HandlerSpec, Registry
from .handoff import Runners, Threads
from .ledger import (
    GATE,
    NUDGE,
    WATCH,
    Change,
    Claim,
    ClaimStatus,
    Entry,
    Record,
    State,
    Store,
    open_url,
)
from .observe import Answer, Observer, Observers, Receipt, Run
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
    Signed,
    Verified,
    authenticate,
    collect_headers,
    decode,
    error_response,
)
from .reconcile import Reconciliation, generation_key, is_generation_key, terminal_event
from .runner import (
    Backoff,
    Keeper,
    Result,
    Settlement,
    aexecute,
    asettle_failure,
    delivery_of,
    execute,
    run_coroutine,
    settle_failure,
    settlement,
)
from .signature import Match, Verifier, parse_secrets

if TYPE_CHECKING:
    from .handlers import ErrorHook

__all__ = ["DEFAULT_MAX_BODY_SIZE", "STORE_ENV", "Dispatch", "Webhooks", "shared_registry"]

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
#: Measured from when the app sees the request: the server before it, proxies and the
#: network take their share of the provider's 5 s (more than 1 s on a loaded host).
DEFAULT_REPLY_DEADLINE = 3.5
PROVIDER_TIMEOUT = 5.0
#: The provider's last retry comes about 12.5 minutes after the first attempt.
MIN_EVENT_AGE = 15 * 60.0

#: Handlers registered with the module-level :func:`on`; every receiver runs them
#: after its own, unless built with ``include_shared=False``.
shared_registry = Registry()

_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

#: A record's secret was verified when it was received; which one is not kept.
RECORDED = Match(index=-1, id="recorded")


#: A pending record older than this (seconds) whose pointer never ran is dispatched again.
DEFAULT_REDISPATCH_GRACE = 60.0


class Dispatch(Protocol):
    """What the receiver needs of a task-queue dispatcher (``gptimg_webhooks.dispatch``)."""

    def dispatch(self, key: str, *, delay: float = 0.0) -> None:
        """Hand the engine a pointer to record ``key``, to run from ``delay`` seconds on."""

    async def adispatch(self, key: str, *, delay: float = 0.0) -> None:
        """Async twin of :meth:`dispatch`."""

    # Optional: ``dispatch_in_transaction(tx, key)`` and ``adispatch_in_transaction``,
    # called inside a transactional ledger's transaction (``tx``: what it yields) so the
    # pointer commits with the record (see :meth:`Webhooks._enqueue`).


def _seconds(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


class _Handoff:
    """Who settles a run: the request (answered after it) or the run itself (answered before).

    The two race for one lock, taken without waiting: the request takes it to answer
    early (:meth:`detach`), the run to say it ended first (:meth:`finish`).
    """

    __slots__ = ("_detached", "_race", "delivery")

    def __init__(self, delivery: Delivery | Callable[[], Delivery] | None = None) -> None:
        self._race = allocate_lock()
        self._detached: bool | None = None  # the race's outcome, once the run has ended
        #: Set once the delivery is recorded and leased (it may be answered early then).
        self.delivery = delivery

    def arm(self, delivery: Delivery) -> None:
        """The delivery is recorded and leased: from now on it may be answered early."""
        self.delivery = delivery

    def detach(self) -> bool:
        """Answer before the run ends; False when it ended meanwhile or is not recorded yet."""
        return self.delivery is not None and self._race.acquire(False)

    def finish(self) -> bool:
        """Mark the run ended; return whether the request had answered already.

        Called from the run's thread only; a second call gives the first call's answer.
        """
        if self._detached is None:
            self._detached = not self._race.acquire(False)
        return self._detached


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
        reconcile: Reconciliation | None = None,
        clock: Callable[[], float] = time.time,
        dispatcher: Dispatch | None = None,
        observers: Sequence[Observer] = (),
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
        self._guard_counter = f"guard:{path}"
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
        if dispatcher is not None and not self.deferred:
            raise ConfigurationError("a dispatcher needs mode='deferred'")
        #: The task queue that runs deferred records; None: workers poll the ledger.
        self.dispatcher = dispatcher
        self.redispatch_grace = DEFAULT_REDISPATCH_GRACE
        #: key -> when this process last re-dispatched it (monotonic): once per grace.
        self._redispatched: dict[str, float] = {}
        self.observers = Observers(observers)
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
        #: Poll the provider for generations no terminal webhook brought (``watch()``).
        self.reconcile = reconcile
        self.keeper = Keeper(self)
        self._limits_cache: dict[Endpoint, Limits] = {}
        self._default_limits: Limits | None = None
        self._pool: Runners | None = None
        #: Where async code runs blocking user code (sync handlers, error hooks, whole
        #: runs): up to 64 at once, never in the loop's default executor, where the
        #: ledger's calls would queue behind them.
        self.run_threads = Threads(64, "gptimg-webhooks-run")
        self._background: set[asyncio.Future[Response]] = set()

    def __repr__(self) -> str:
        if self._default is None:
            return f"Webhooks(path={self.path!r}, store={type(self.store).__name__}, accounts)"
        ids = ", ".join(s.id for s in self._default.verifier.secrets)
        return f"Webhooks(path={self.path!r}, store={type(self.store).__name__}, secrets=[{ids}])"

    @property
    def guard_counter(self) -> str:
        """Name the ledger counter of this endpoint's consecutive non-2xx answers."""
        return self._guard_counter

    @property
    def guard_limit(self) -> int:
        """The count at which the guard answers 2xx instead (``failure_threshold`` + 1)."""
        return self.failure_threshold + 1

    def counter_for(self, key: str) -> str:
        """Name the guard counter of the endpoint a record ``key`` came through."""
        if self.accounts is None:  # the hot path of a one-account receiver: no parsing
            return self._guard_counter
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
        if endpoint is self._default and self._default_limits is not None:
            return self._default_limits  # no dataclass hash per request
        found = self._limits_cache.get(endpoint)
        if found is None:
            found = Limits(
                endpoint.verifier, self.max_body_size, self.max_event_age, self.clock_skew
            )
            if len(self._limits_cache) > 4096:  # a resolver's accounts come and go
                self._limits_cache.clear()
            self._limits_cache[endpoint] = found
            if endpoint is self._default:
                self._default_limits = found
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
            extra=_run_fields(delivery, "handler_failed"),
        )
        for hook in self._error_hooks():
            try:
                result = hook(exc, event, delivery)
                if asyncio.iscoroutine(result):
                    run_coroutine(result)
            except Exception:
                logger.exception("error hook %r raised", hook)

    # The request path, blocking ------------------------------------------------------

    def _verify(
        self, endpoint: Endpoint, method: str, headers: Headers, body: bytes, now: float
    ) -> Verified | Signed:
        """Verify a request; stop at its signature when the ledger already has it done.

        A byte-identical signed body ran once: it is a duplicate whatever its unsigned
        headers say now and however old it is, and its parse can be skipped.
        """
        limits = self._limits(endpoint)
        signed = authenticate(limits, method, headers, body)
        # Observers see a duplicate's receipt: only their absence takes the shortcut.
        if not self.observers.items and self.store.known_done(endpoint.namespace + signed.key):
            return signed
        return decode(limits, signed, now)

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
            now = self.clock()
            verified = self._verify(endpoint, method, headers, body, now)
        except WebhookError as exc:
            return self._told(started, self._rejected(exc, headers, endpoint), None, exc, headers)
        if isinstance(verified, Signed):
            return self._told(started, _duplicate(verified), verified)
        if endpoint.namespace or self.observers.items or self.deferred or self.store.thread_bound:
            return self._handle_wrapped(verified, endpoint, started)
        # The common case, straight: claim in this thread (a duplicate never leaves it),
        # then run the handlers, under the reply deadline when there is one.
        try:
            claim = self._claim(verified)
        except Exception as exc:  # a bug of ours (or a store's): answer, never raise
            return _internal(verified.delivery_id, exc)
        if isinstance(claim, Response):
            return claim
        # Built only for a handler that takes it, or to report an error.
        delivery = partial(self._delivery, verified, claim.attempt, now)
        # No handler (the event is ignored): nothing here can outlast the deadline.
        if self.reply_deadline is None or not self.routes(verified.event.event):
            return self._run_claimed(verified, delivery, claim.token, None)
        handoff = _Handoff(delivery)
        remaining = max(0.0, self.reply_deadline - (time.monotonic() - started))
        pending = self._executor().call(
            remaining, self._run_claimed, verified, delivery, claim.token, handoff
        )
        if pending.finished:
            return pending.result()
        return _within(pending.result, handoff, started, self.reply_deadline)

    def _handle_wrapped(self, verified: Verified, endpoint: Endpoint, started: float) -> Response:
        """The request path with observers, an account's namespace or deferred mode."""
        if endpoint.namespace:
            verified = _namespaced(verified, endpoint)
        with self._receiving(verified) as (verified, receipt):
            if self.reply_deadline is None:
                response = self.handle_verified(verified)
            else:
                handoff = _Handoff()
                future = self._executor().submit(self._pooled, verified, handoff)
                response = _within(future.result, handoff, started, self.reply_deadline)
            _fill(receipt, response)
        return self._told(started, response, verified)

    # Observers ------------------------------------------------------------------------

    @contextmanager
    def _receiving(self, verified: Verified) -> Iterator[tuple[Verified, Receipt | None]]:
        """Let observers wrap a verified delivery's receipt (and stamp its traceparent)."""
        if not self.observers:
            yield verified, None
            return
        receipt = Receipt(
            verified.delivery_id,
            verified.event.event,
            verified.entry.key,
            "deferred" if self.deferred else "inline",
        )
        with self.observers.receiving(receipt):
            if receipt.traceparent:
                entry = replace(verified.entry, traceparent=receipt.traceparent)
                verified = replace(verified, entry=entry)
            yield verified, receipt

    @contextmanager
    def _running(
        self, delivery: Delivery, runner: str, traceparent: str | None = None
    ) -> Iterator[Run | None]:
        """Let observers wrap one run of a record's handlers; they see its duration."""
        if not self.observers:
            yield None
            return
        run = Run(delivery.key, delivery.id, delivery.event, delivery.attempt, runner, traceparent)
        with self.observers.running(run):
            start = time.monotonic()
            try:
                yield run
            finally:
                run.duration = time.monotonic() - start

    def _told(
        self,
        started: float,
        response: Response,
        verified: Verified | Signed | None,
        exc: WebhookError | None = None,
        headers: Headers | None = None,
    ) -> Response:
        """Tell observers about an answer; return it."""
        if self.observers:
            cause = ""
            if isinstance(exc, InvalidSignature) and headers is not None:
                found = len(collect_headers(headers)[0])
                cause = "missing" if not found else "repeated" if found > 1 else "mismatch"
            delivery_id = verified.delivery_id if verified is not None else ""
            event = verified.event_name if verified is not None else None
            latency = time.monotonic() - started
            answer = Answer(response.status, _word(response), event, delivery_id, latency, cause)
            self.observers.answered(answer)
        return response

    def _pooled(self, verified: Verified, handoff: _Handoff | None) -> Response:
        try:
            return self.handle_verified(verified, handoff)
        finally:
            self.store.close_thread()

    def _run_claimed(
        self,
        verified: Verified,
        delivery: Callable[[], Delivery],
        token: str,
        handoff: _Handoff | None,
    ) -> Response:
        """Run a claimed delivery and settle it; with ``handoff``, in a runner thread."""
        try:
            return self._run_and_settle(
                verified.event, delivery, verified.entry.key, token, handoff
            )
        except Exception as exc:  # a bug of ours (or a store's): answer, never raise
            return _internal(verified.delivery_id, exc)
        finally:
            if handoff is not None:
                self.store.close_thread()

    def _answered(self, response: Response) -> Response:
        if response.status < 300:
            # A 2xx resets the provider's count: 503s it followed no longer matter.
            self.keeper.clear_unrecorded()
        return response

    def handle_verified(self, verified: Verified, handoff: _Handoff | None = None) -> Response:
        """Record and run an already verified delivery, blocking."""
        try:
            claim = self._claim(verified)
            if isinstance(claim, Response):
                return claim
            delivery = self._delivery(verified, claim.attempt)
            if handoff is not None:
                handoff.arm(delivery)
            return self._run_and_settle(
                verified.event, delivery, delivery.key, claim.token, handoff
            )
        except Exception as exc:  # a bug of ours (or a store's): answer, never raise
            return _internal(verified.delivery_id, exc)

    def _claim(self, verified: Verified) -> Claim | Response:
        """Record a verified delivery and lease it (enqueue it, deferred); or answer it now."""
        try:
            if self.deferred:
                claim = self._enqueue(verified.entry)
            else:
                claim = self.store.claim(verified.entry, lease=self.lease)
        except Exception as exc:  # a store's bug fails closed like an outage
            return self._store_down(verified, _as_outage(exc))
        if claim.status is not ClaimStatus.CLAIMED:
            return self._unclaimed(claim, verified)
        return claim

    def _rejected(
        self, exc: WebhookError, headers: Headers, endpoint: Endpoint | None = None
    ) -> Response:
        if not isinstance(exc, SIGNED_REJECTIONS) or endpoint is None:
            _log_rejection(exc, headers)
            return error_response(exc)
        try:
            if exc.key is not None and self._done(endpoint.namespace + exc.key):
                # The signed body ran already: what its unsigned headers or its age say
                # now changes nothing, and a refusal would count toward disabling us.
                logger.info(
                    "duplicate of %s: already done (this copy alone would be %s)",
                    exc.key[:12],
                    exc.code,
                    extra={"key_prefix": exc.key[:12], "outcome": "duplicate"},
                )
                return DUPLICATE
            entry = getattr(exc, "entry", None)
            if entry is not None:  # keep the signed raw body for inspection
                entry = replace(entry, key=endpoint.namespace + entry.key)
                claim = self.store.claim(entry, lease=self.lease)
                if claim.status is ClaimStatus.CLAIMED:
                    self.store.fail(entry.key, claim.token, f"{exc.code}: {exc}")
        except StoreUnavailable:
            logger.warning("could not keep the refused body: the ledger is unavailable")
        _log_rejection(exc, headers)
        if self.guard_trips(endpoint.counter):
            return _guard_rejected(exc)
        return error_response(exc)

    def _done(self, key: str) -> bool:
        record = self.store.get(key)
        return record is not None and record.state is State.DONE

    def _store_down(self, verified: Verified, exc: StoreUnavailable) -> Response:
        if not self.fail_open:
            logger.error(
                "ledger unavailable, answering 503 (delivery %r): %s",
                verified.delivery_id,
                exc,
                extra=_fields(verified, "store_unavailable"),
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
            return _duplicate(verified) if answer is DUPLICATE else answer
        tripped = self.guard_trips(self.counter_for(verified.entry.key))
        return _in_progress(tripped, verified.delivery_id)

    def _executor(self) -> Runners:
        pool = self._pool
        if pool is None:
            pool = self._pool = Runners(max_threads=64, name="gptimg-webhooks-run")
        return pool

    def _run_and_settle(
        self,
        event: Event,
        delivery: Delivery | Callable[[], Delivery],
        key: str,
        token: str,
        handoff: _Handoff | None,
    ) -> Response:
        also = None
        if self.reconcile is not None:
            try:
                step, also = self._take_gate(event, key)
            except StoreUnavailable as exc:
                self.keeper.settle_later(
                    key, token, "store unavailable at the gate", Settlement("fail")
                )
                self.keeper.unrecorded_failure(self.counter_for(key))
                return error_response(exc)
            if step != "run":
                return self._gated(step, delivery_of(delivery), token)
        if self.observers.items:
            with self._running(delivery_of(delivery), "inline") as run:
                result = execute(
                    self, event, delivery, token, also, key, answered=_answered_early(handoff)
                )
                if run is not None:
                    run.outcome = result.outcome
        else:
            result = execute(
                self, event, delivery, token, also, key, answered=_answered_early(handoff)
            )
        detached = handoff is not None and handoff.finish()
        if result.outcome != "failed":
            return _result_answer(result)
        delivery = delivery_of(delivery)
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
            verified = self._verify(endpoint, method, headers, body, self.clock())
        except WebhookError as exc:
            if isinstance(exc, SIGNED_REJECTIONS):
                response = await asyncio.to_thread(self._rejected, exc, headers, endpoint)
            else:
                _log_rejection(exc, headers)
                response = error_response(exc)
            return self._told(started, response, None, exc, headers)
        if isinstance(verified, Signed):
            return self._told(started, _duplicate(verified), verified)
        if endpoint.namespace:
            verified = _namespaced(verified, endpoint)
        if not self.observers.items:  # no generator-based context per delivery
            return await self._ahandle_verified(verified, started)
        with self._receiving(verified) as (verified, receipt):
            response = await self._ahandle_verified(verified, started)
            _fill(receipt, response)
        return self._told(started, response, verified)

    async def _ahandle_verified(self, verified: Verified, started: float) -> Response:
        store = self.store
        routes = self.routes(verified.event.event)
        if not any(h.is_async for h in routes) and self._one_hop(routes):
            if self.reply_deadline is None:
                return await self.run_threads.run(self._pooled, verified, None)
            handoff = _Handoff()
            call = self.run_threads.submit(self._pooled, verified, handoff)
            ended = _ending(call)
            return await _awithin(call, handoff, started, self.reply_deadline, self, ended)
        try:
            try:
                if self.deferred:
                    claim = await self._aenqueue(verified.entry)
                else:
                    claim = await store.aclaim(verified.entry, lease=self.lease)
            except Exception as exc:  # a store's bug fails closed like an outage
                return await asyncio.to_thread(self._store_down, verified, _as_outage(exc))
            if claim.status is not ClaimStatus.CLAIMED:
                answer = _claim_answer(claim, self.deferred)
                if answer is not None:
                    return _duplicate(verified) if answer is DUPLICATE else answer
                return await asyncio.to_thread(self._unclaimed, claim, verified)
            # Built only for a handler that takes it, or to report an error.
            delivery = partial(self._delivery, verified, claim.attempt, self.clock())
            key = verified.entry.key
            if self.reply_deadline is None:
                return await self._arun_and_settle(verified.event, delivery, key, claim.token, None)
            handoff = _Handoff(delivery)
            ended = asyncio.get_running_loop().create_future()
            run = self._arun_and_settle(verified.event, delivery, key, claim.token, handoff)
            task = _start(_telling(run, ended))
            return await _awithin(task, handoff, started, self.reply_deadline, self, ended)
        except Exception as exc:
            return _internal(verified.delivery_id, exc)

    def _one_hop(self, routes: tuple[HandlerSpec, ...]) -> bool:
        """Tell whether a delivery with sync handlers only goes to a thread in one hop."""
        store = self.store
        if self.deferred:  # the request only enqueues: on the loop if the store can
            return not (store.native_async or store.loop_first)
        if store.native_async:
            # A ledger without I/O joins the hop its sync handlers take anyway: no task.
            return store.in_process and bool(routes)
        return True  # a blocking ledger and sync handlers: the rest costs one thread hop

    async def _arun_and_settle(
        self,
        event: Event,
        delivery: Delivery | Callable[[], Delivery],
        key: str,
        token: str,
        handoff: _Handoff | None,
    ) -> Response:
        if self.reconcile is not None and _terminal_generation(event) is not None:
            # The gate costs a round trip only with reconciliation on: keep it simple.
            return await self.run_threads.run(
                self._run_and_settle, event, delivery, key, token, handoff
            )
        answered = _answered_early(handoff)
        if self.observers.items:
            with self._running(delivery_of(delivery), "inline") as run:
                result = await aexecute(self, event, delivery, token, None, key, answered=answered)
                if run is not None:
                    run.outcome = result.outcome
        else:  # no generator-based context per delivery
            result = await aexecute(self, event, delivery, token, None, key, answered=answered)
        detached = handoff is not None and handoff.finish()
        if result.outcome != "failed":
            return _result_answer(result)
        delivery = delivery_of(delivery)
        error = _error_text(result)
        plan = settlement(self.backoff, delivery.attempt, provider_retries=not detached)
        if plan.op == "fail" and await self.aguard_trips(self.counter_for(delivery.key)):
            plan = settlement(self.backoff, delivery.attempt, provider_retries=False)
        await asettle_failure(self, delivery.key, token, error, plan)
        return _failure_answer(result, plan, delivery, detached)

    # Runners: recovery, replay -------------------------------------------------------

    def _delivery(self, verified: Verified, attempt: int, now: float | None = None) -> Delivery:
        return Delivery(
            verified.delivery_id,
            verified.event.event,
            verified.entry.key,
            verified.match,
            self.clock() if now is None else now,
            attempt,
            account=None if self.accounts is None else _account_of(verified.entry.key),
        )

    def run_record(self, record: Record, claim: Claim, *, backoff: Backoff | None = None) -> str:
        """Run a leased record from its stored body and settle it as a runner; return the outcome.

        A failure is retried after ``backoff`` (the receiver's by default), or buried
        once out of attempts. Outcomes: ``processed``, ``ignored``, ``handler_failed``
        (retry scheduled), ``dead``, ``lease_lost`` or ``store_unavailable``.
        """
        if is_generation_key(record.key):
            return self._poll_record(record, claim, backoff)
        event = _stored_event(self, record, claim)
        if event is None:
            return "dead"
        delivery = _stored_delivery(record, event, claim)
        step, also = self._take_gate(event, record.key)
        if step != "run":
            return str(self._gated(step, delivery, claim.token).json.get("status", step))
        with self._running(delivery, "deferred", record.traceparent) as run:
            result = execute(self, event, delivery, claim.token, also)
            if run is not None:
                run.outcome = result.outcome
        if result.outcome != "failed":
            return result.outcome
        plan = settlement(backoff or self.backoff, claim.attempt, provider_retries=False)
        settle_failure(self, record.key, claim.token, _error_text(result), plan)
        return "dead" if plan.op == "bury" else "handler_failed"

    async def arun_record(
        self, record: Record, claim: Claim, *, backoff: Backoff | None = None
    ) -> str:
        """Async twin of :meth:`run_record` (workers)."""
        if self.reconcile is not None:  # gates and polls are blocking calls: one thread hop
            return await self.run_threads.run(
                partial(self.run_record, backoff=backoff), record, claim
            )
        event = await asyncio.to_thread(_stored_event, self, record, claim)
        if event is None:
            return "dead"
        delivery = _stored_delivery(record, event, claim)
        with self._running(delivery, "deferred", record.traceparent) as run:
            result = await aexecute(self, event, delivery, claim.token)
            if run is not None:
                run.outcome = result.outcome
        if result.outcome != "failed":
            return result.outcome
        plan = settlement(backoff or self.backoff, claim.attempt, provider_retries=False)
        await asettle_failure(self, record.key, claim.token, _error_text(result), plan)
        return "dead" if plan.op == "bury" else "handler_failed"

    # Reconciliation -----------------------------------------------------------------

    def watch(self, generation_id: str, *, account: str | None = None) -> bool:
        """Remember a submitted generation: poll for it if no terminal webhook comes in time.

        Pass it to the API client (``Client(..., on_submitted=hooks.watch)``) so every
        generation it submits is watched. Return False when it was watched (or seen) already.
        """
        if self.reconcile is None:
            raise ConfigurationError("watch() needs Webhooks(reconcile=Reconciliation(...))")
        namespace = f"{account}:" if account else ""
        key = generation_key(namespace, generation_id)
        entry = Entry(key, "", None, generation_id, b"")
        return self.store.apply(Change(WATCH, key, entry=entry, delay=self.reconcile.after)).ok

    def reconcile_now(self, *, limit: int = 1000) -> dict[str, str]:
        """Poll every watched generation still pending now, not at its time; run the outcomes.

        ``gptimg-webhooks reconcile`` calls this, e.g. after an outage or a disabled
        endpoint. Return each record's outcome by key (as :meth:`recover`).
        """
        for record in self.store.records(State.PENDING, limit=limit):
            if is_generation_key(record.key):
                self.store.apply(Change(NUDGE, record.key))
        return self.recover(limit=limit)

    def _take_gate(self, event: Event, key: str) -> tuple[str, tuple[str, str] | None]:
        """Take a terminal event's generation gate: ``run`` (holding it), ``done`` or ``busy``."""
        generation_id = _terminal_generation(event) if self.reconcile is not None else None
        if generation_id is None:
            return "run", None
        gate = generation_key(_namespace_of(key), generation_id)
        entry = Entry(gate, "", event.event, generation_id, b"")
        taken = self.store.apply(Change(GATE, gate, entry=entry, lease=self.lease))
        if taken.ok:
            return "run", (gate, taken.token)
        return ("done" if taken.found is State.DONE else "busy"), None

    def _gated(self, step: str, delivery: Delivery, token: str) -> Response:
        """Settle a delivery whose generation another path (a poll) has or is handling."""
        if step == "done":
            logger.info("generation of %s was handled by reconciliation", delivery.key[:12])
            self.store.complete(delivery.key, token, counter=self.counter_for(delivery.key))
            return DUPLICATE
        self.store.fail(delivery.key, token, "its generation is being handled by a poll")
        return _in_progress(self.guard_trips(self.counter_for(delivery.key)), delivery.id)

    def _poll_record(self, record: Record, claim: Claim, backoff: Backoff | None) -> str:
        reconcile = self.reconcile
        generation_id = record.generation_id
        if reconcile is None or generation_id is None:
            self.store.bury(record.key, claim.token, "reconciliation is not configured")
            return "dead"
        account = _account_of(record.key)
        try:
            generation = reconcile.poll(generation_id, account)
        except Exception as exc:
            logger.warning("polling %s failed: %s", generation_id[:40], type(exc).__name__)
            return self._poll_again(record, claim, f"poll failed: {type(exc).__name__}")
        event = terminal_event(generation)
        if event is None:
            return self._poll_again(record, claim, f"still {generation.status}")
        delivery = Delivery(
            "reconciled",
            event.event,
            record.key,
            RECORDED,
            self.clock(),
            claim.attempt,
            account=account,
        )
        result = execute(self, event, delivery, claim.token)
        if result.outcome != "failed":
            logger.info("generation %s reconciled by polling", generation_id[:40])
            return result.outcome
        plan = settlement(backoff or self.backoff, claim.attempt, provider_retries=False)
        settle_failure(self, record.key, claim.token, _error_text(result), plan)
        return "dead" if plan.op == "bury" else "handler_failed"

    def _poll_again(self, record: Record, claim: Claim, why: str) -> str:
        assert self.reconcile is not None
        if claim.attempt >= self.reconcile.max_polls:
            self.store.bury(record.key, claim.token, f"gave up polling: {why}")
            return "dead"
        self.store.retry(record.key, claim.token, why, delay=self.reconcile.every)
        return "polling"

    def recover(self, *, limit: int = 20) -> dict[str, str]:
        """Run records that are due (pending, or abandoned by a dead runner) now; blocking.

        The receiver's recovery sweep calls this off the request path in inline mode.
        Return each record's outcome by key.
        """
        if self.dispatcher is not None:
            return dict.fromkeys(self.redispatch(limit=limit), "dispatched")
        outcomes = {}
        for record, claim in self.store.lease_due(lease=self.lease, limit=limit):
            outcomes[record.key] = self.run_record(record, claim)
        return outcomes

    # Task queues: pointers --------------------------------------------------------------

    def _enqueue(self, entry: Entry) -> Claim:
        """Queue a delivery and hand its pointer to the dispatcher, if any.

        A dispatcher with ``dispatch_in_transaction(tx, key)`` on a transactional ledger
        defers its pointer in the ledger's own transaction: both commit, or neither.
        Otherwise the pointer is sent after the commit (a lost one is the sweep's).
        """
        dispatcher = self.dispatcher
        joins = getattr(dispatcher, "dispatch_in_transaction", None)
        if joins is None or not self.store.transactional:
            claim = self.store.enqueue(entry)
            if claim.queued and dispatcher is not None:
                self.send_pointer(entry.key)
            return claim
        with self.store.transaction() as tx:
            claim = self.store.enqueue(entry)
            if claim.queued:
                joins(tx, entry.key)
        return claim

    async def _aenqueue(self, entry: Entry) -> Claim:
        """Async twin of :meth:`_enqueue`."""
        store, dispatcher = self.store, self.dispatcher
        joins = getattr(dispatcher, "adispatch_in_transaction", None)
        if joins is None or not (store.transactional and store.async_transactions):
            if joins is not None and store.transactional:
                return await asyncio.to_thread(self._enqueue, entry)
            claim = await store.aenqueue(entry)
            if claim.queued and dispatcher is not None:
                await self.asend_pointer(entry.key)
            return claim
        async with store.atransaction() as tx:
            claim = await store.aenqueue(entry)
            if claim.queued:
                await joins(tx, entry.key)
        return claim

    def send_pointer(self, key: str, delay: float = 0.0) -> bool:
        """Hand the dispatcher a pointer; a lost one is the sweep's (:meth:`redispatch`)."""
        assert self.dispatcher is not None
        try:
            self.dispatcher.dispatch(key, delay=delay)
            return True
        except Exception as exc:
            _log_lost_pointer(key, exc)
            return False

    async def asend_pointer(self, key: str, delay: float = 0.0) -> bool:
        assert self.dispatcher is not None
        try:
            await self.dispatcher.adispatch(key, delay=delay)
            return True
        except Exception as exc:
            _log_lost_pointer(key, exc)
            return False

    def redispatch(self, *, limit: int = 100, grace: float | None = None) -> list[str]:
        """Dispatch again the records whose pointer was lost; return their keys.

        A record is re-dispatched when it is due and pending since more than ``grace``
        seconds (default :attr:`redispatch_grace`), or processing under a lease that ran
        out (its task died). Dispatching twice is harmless: the ledger runs it once.
        """
        if self.dispatcher is None:
            raise ConfigurationError("redispatch needs a dispatcher")
        grace = self.redispatch_grace if grace is None else grace
        now, tick = self.clock(), time.monotonic()
        # A backlog longer than the grace must not turn into a storm of copies.
        recent = self._redispatched
        for key in [k for k, at in recent.items() if tick - at >= grace]:
            del recent[key]
        sent = []
        for key in self.store.due(limit):
            if key in recent:
                continue
            record = self.store.get(key)
            if record is None:
                continue
            # A retry's pointer was sent with its delay: count the grace from when it is due.
            since = max(record.updated_at, record.available_at or 0.0)
            if record.state is State.PENDING and now - since < grace:
                continue  # its pointer is probably still on its way
            if self.send_pointer(key):
                recent[key] = tick
                sent.append(key)
        if sent:
            logger.warning("re-dispatched %d record(s) whose task was lost or died", len(sent))
        return sent

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
            self._pool.close(wait=False)
            self._pool = None
        self.run_threads.close()
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


async def _telling(run: Awaitable[Response], ended: asyncio.Future[None]) -> Response:
    """Await ``run``, then set ``ended`` from inside its own step."""
    try:
        return await run
    finally:
        _end(ended)


def _end(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)


def _ending(call: concurrent.futures.Future[Response]) -> asyncio.Future[None]:
    """Return a future of this loop that ``call``'s thread sets as the call ends.

    Awaited directly, it wakes the request one turn of the loop sooner than waiting for
    an asyncio wrapper of ``call`` (``asyncio.wait``, ``wrap_future``).
    """
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def tell(_: object) -> None:
        with suppress(RuntimeError):  # the loop closed: nobody waits for this run any more
            loop.call_soon_threadsafe(_end, ended)

    call.add_done_callback(tell)
    return ended


async def _awithin(
    run: asyncio.Task[Response] | concurrent.futures.Future[Response],
    handoff: _Handoff,
    started: float,
    deadline: float,
    hooks: Webhooks,
    ended: asyncio.Future[None],
) -> Response:
    """Async twin of :func:`_within`: ``ended`` is set by the run itself as it ends.

    The run wakes the request at its end (see :func:`_telling`, :func:`_ending`): one
    turn of the loop fewer than waiting for its done callbacks, which run a turn later.
    """
    if run.done():  # it never waited (see _start): no wait, no turn of the loop
        return run.result()
    task = run if isinstance(run, asyncio.Task) else None
    if task is not None:
        # A task started lazily (before 3.12) takes its first step in the loop's next
        # turn. Yielding bare puts this request right behind it in that same turn, so a
        # run that never waits is answered without a timer or a second turn.
        await asyncio.sleep(0)
        if task.done():
            return task.result()
    remaining = max(0.0, deadline - (time.monotonic() - started))
    timer = asyncio.get_running_loop().call_later(remaining, _end, ended)
    try:
        await ended
    finally:
        timer.cancel()
    if run.done():
        return run.result()
    if handoff.detach():
        if task is not None:
            # Keep a reference: the loop holds tasks only weakly.
            hooks._background.add(task)
            task.add_done_callback(hooks._background.discard)
        _log_detached(handoff.delivery)
        return RUNNING
    # Not recorded yet: never answer 2xx for what may be lost.
    return await (task if task is not None else asyncio.wrap_future(run))


#: Python 3.12+: a run's task takes its first step at once, in its own context and as
#: the current task, so a run that never waits is over before the request waits for it.
_eager = getattr(asyncio, "eager_task_factory", None)


def _start(coro: Coroutine[Any, Any, Response]) -> asyncio.Task[Response]:
    """Start a run as a task, eagerly where the loop can."""
    if _eager is None:
        return asyncio.ensure_future(coro)
    task: asyncio.Task[Response] = _eager(asyncio.get_running_loop(), coro)
    return task


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


def _in_progress(tripped: bool, delivery_id: str) -> Response:
    if tripped:
        logger.error(
            "a copy of delivery %r is still in progress; answering 2xx to keep the endpoint "
            "enabled",
            delivery_id,
            extra={"delivery_id": delivery_id, "outcome": "processing"},
        )
        return RUNNING
    exc = DeliveryInProgress("a copy of this delivery is being processed; retry later")
    _log_rejection(exc, delivery_id=delivery_id)
    return error_response(exc)


def _answered_early(handoff: _Handoff | None) -> Callable[[], bool]:
    """Whether a request's run ended by an outage was answered early (no retry follows)."""
    # finish() also stops an early answer from going out after the run ended.
    return _not_yet if handoff is None else handoff.finish


def _not_yet() -> bool:
    return False


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
    fields = _run_fields(delivery, "failed_accepted")
    if detached:  # answered 202 already: the provider will not retry
        logger.warning(
            "handler for %s failed after the reply deadline (delivery %r); a runner retries "
            "it from the ledger",
            delivery.event,
            delivery.id,
            extra=fields,
        )
    else:
        logger.error(
            "handler failed for %s (delivery %r); answering 2xx to keep the endpoint from "
            "auto-disable: a runner retries it from the ledger",
            delivery.event,
            delivery.id,
            extra=fields,
        )
    return FAILED_ACCEPTED


def _guard_rejected(exc: WebhookError) -> Response:
    logger.error(
        "refused a signed delivery (%s) but answering 2xx to keep the endpoint from auto-disable",
        exc.code,
    )
    return REJECTED_ACCEPTED


def _word(response: Response) -> str:
    """The answer's one word: its ``status`` (2xx) or ``error`` (the rest)."""
    try:
        body = response.json
        return str(body.get("status") or body.get("error") or response.status)
    except (ValueError, AttributeError):
        return str(response.status)


def _fill(receipt: Receipt | None, response: Response) -> None:
    if receipt is not None:
        receipt.outcome, receipt.status = _word(response), response.status


def _fields(verified: Verified | Signed, outcome: str) -> dict[str, object]:
    """The structured ``extra=`` fields of a log line about a verified delivery."""
    return {
        "delivery_id": verified.delivery_id,
        "event": verified.event_name,
        "key_prefix": verified.key[:12],
        "outcome": outcome,
    }


def _duplicate(verified: Verified | Signed) -> Response:
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "duplicate of %s (delivery %r): already done",
            verified.key[:12],
            verified.delivery_id,
            extra=_fields(verified, "duplicate"),
        )
    return DUPLICATE


def _run_fields(delivery: Delivery, outcome: str) -> dict[str, object]:
    """The structured ``extra=`` fields of a log line about one run of a delivery."""
    return {
        "delivery_id": delivery.id,
        "event": delivery.event,
        "key_prefix": delivery.key[:12],
        "attempt": delivery.attempt,
        "outcome": outcome,
    }


def _log_lost_pointer(key: str, exc: BaseException) -> None:
    logger.warning(
        "could not dispatch %s (%s: %s); the sweep dispatches it again later",
        key[:12],
        type(exc).__name__,
        exc,
        extra={"key_prefix": key[:12], "outcome": "dispatch_failed"},
    )


def _error_text(result: Result) -> str:
    error = result.error
    return "" if error is None else f"{type(error).__name__}: {error}"[:2000]


def _account_of(key: str) -> str | None:
    """Return the account a record key is namespaced under (``name:...``), if any."""
    head, sep, _ = key.partition(":")
    return head if sep and _ACCOUNT.fullmatch(head) else None


def _namespace_of(key: str) -> str:
    account = _account_of(key)
    return f"{account}:" if account else ""


def _terminal_generation(event: Event) -> str | None:
    """Return the generation id of a terminal event (what a poll could also find)."""
    if isinstance(event, GenerationSucceeded | GenerationFailed):
        return event.data.generation_id
    return None


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


def _log_rejection(
    exc: WebhookError, headers: Headers | None = None, *, delivery_id: str = ""
) -> None:
    # Expected rejections: WARNING at most, never the body. The delivery id is unsigned:
    # only ever logged with %r, and cut short.
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


def _log_detached(made: Delivery | Callable[[], Delivery] | None) -> None:
    assert made is not None
    delivery = delivery_of(made)
    logger.warning(
        "handlers for %s still run at the reply deadline (delivery %r); answered 202, "
        "they go on holding the lease",
        delivery.event,
        delivery.id,
        extra=_run_fields(delivery, "processing"),
    )


def _as_outage(exc: Exception) -> StoreUnavailable:
    if isinstance(exc, StoreUnavailable):
        return exc
    logger.error("the ledger store raised %s; failing closed", type(exc).__name__, exc_info=exc)
    return StoreUnavailable(f"store raised {type(exc).__name__}")


def _internal(delivery_id: str, exc: BaseException) -> Response:
    logger.error("internal error (delivery %r)", delivery_id, exc_info=exc)
    return error_response(WebhookError(f"internal error: {type(exc).__name__}"))
