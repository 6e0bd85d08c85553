"""The sans-I/O heart: one request in, one :class:`Response` out.

:func:`flow` is a generator. It decides everything and does no I/O: where it needs the
ledger or the handlers it yields a command, and a driver (sync or async, see
``receiver.py``) performs it and sends the result back. Both drivers share this one
copy of the logic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import strictjson
from .errors import (
    DeliveryInProgress,
    EventMismatch,
    HandlerFailed,
    InvalidHeaders,
    InvalidPayload,
    InvalidSignature,
    LeaseLost,
    MethodNotAllowed,
    PayloadTooLarge,
    StaleEvent,
    StoreUnavailable,
    UnsupportedEncoding,
    WebhookError,
)
from .events import Event, parse_event
from .handlers import Delivery, HandlerSpec
from .ledger import Claim, ClaimStatus, Entry

if TYPE_CHECKING:
    from .receiver import Webhooks

__all__ = [
    "Backoff",
    "Dispatch",
    "Fail",
    "Headers",
    "Lease",
    "Prune",
    "RecordFailure",
    "Response",
    "flow",
]

logger = logging.getLogger("gptimg_webhooks")

Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]

SIGNATURE_HEADER = "x-gptimg-signature"
DELIVERY_HEADER = "x-gptimg-delivery"
EVENT_HEADER = "x-gptimg-event"
_WANTED = {
    SIGNATURE_HEADER: 0,
    DELIVERY_HEADER: 1,
    EVENT_HEADER: 2,
    "content-encoding": 3,
}
_WANTED_BYTES = {k.encode(): v for k, v in _WANTED.items()}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_EVENT_NAME = re.compile(r"[a-z0-9_]{1,64}(?:\.[a-z0-9_]{1,64}){1,4}")
_JSON = (("content-type", "application/json"),)


@dataclass(frozen=True, slots=True)
class Response:
    """What to answer: status, headers and a short JSON body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def _ok(status: int, outcome: str) -> Response:
    return Response(status, _JSON, json.dumps({"ok": True, "status": outcome}).encode())


PROCESSED = _ok(200, "processed")
IGNORED = _ok(200, "ignored")
DUPLICATE = _ok(200, "duplicate")
QUEUED = _ok(202, "queued")
DEAD = _ok(200, "dead")
FAILED_ACCEPTED = _ok(200, "failed_accepted")
#: Fail-open mode ran the handlers while the ledger was down: nothing was recorded.
UNRECORDED = _ok(200, "processed_unrecorded")


def error_response(exc: WebhookError) -> Response:
    """Map an error of the tree to its HTTP answer."""
    headers: tuple[tuple[str, str], ...] = _JSON
    if isinstance(exc, MethodNotAllowed):
        headers += (("allow", "POST"),)
    elif isinstance(exc, StoreUnavailable):
        headers += (("retry-after", str(exc.retry_after)),)
    body = json.dumps({"ok": False, "error": exc.code, "message": str(exc) or exc.code})
    return Response(exc.status, headers, body.encode())


# Commands a driver performs ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """Record the entry and try to take its lease; send back a :class:`Claim`."""

    entry: Entry
    defer: bool = False


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run the handlers, then mark the record done, in the store's transaction if any.

    Send back the exception that stopped them (a :class:`LeaseLost` when ``complete``
    found the lease gone), or None once the record is done.
    """

    event: Event
    delivery: Delivery
    handlers: tuple[HandlerSpec, ...]
    token: str
    #: False in fail-open mode with the ledger down: no transaction, no done mark.
    ledger: bool = True
    #: Workers: until this time (the lease's end) a done mark that meets a store outage
    #: is retried, when no transaction would be lost; handlers are not run again.
    settle_until: float | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """Mark the record failed, keeping its body.

    Workers settle it further: ``retry_in`` seconds from now it is pending again, or
    with ``dead`` it is out of attempts.
    """

    key: str
    token: str
    error: str
    retry_in: float | None = None
    dead: bool = False


@dataclass(frozen=True, slots=True)
class Backoff:
    """A worker's retry policy: exponential delays, then dead after ``max_attempts``."""

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
class RecordFailure:
    """Count a handler failure; send back True when the guard says answer 2xx."""

    limit: int


@dataclass(frozen=True, slots=True)
class Prune:
    """Delete finished records older than ``before``."""

    before: float


Command = Lease | Dispatch | Fail | RecordFailure | Prune


def collect_headers(headers: Headers) -> tuple[list[str], ...]:
    """Pick the headers the protocol reads, keeping every repeated value."""
    found: tuple[list[str], ...] = ([], [], [], [])
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if isinstance(name, bytes):
            slot = _WANTED_BYTES.get(name.lower())
        else:
            slot = _WANTED.get(name.lower())
        if slot is not None:
            found[slot].append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return found


def _single(values: list[str], name: str) -> str:
    if not values:
        raise InvalidHeaders(f"{name} header missing")
    if len(values) > 1:
        raise InvalidHeaders(f"{name} header repeated")
    return values[0]


def _check_age(hooks: Webhooks, event: Event, now: float) -> None:
    max_age = hooks.max_event_age
    if max_age is None:
        return
    stamp = event.timestamp
    if stamp is None:
        raise StaleEvent("event has no signed timestamp to judge its age")
    age = now - stamp.timestamp()
    if age > max_age + hooks.clock_skew:
        raise StaleEvent(f"event is {age:.0f}s old (max {max_age:.0f}s)")
    if age < -hooks.clock_skew:
        raise StaleEvent(f"event is {-age:.0f}s in the future")


def flow(
    hooks: Webhooks, method: str, headers: Headers, body: bytes, now: float
) -> Generator[Command, Any, Response]:
    """Decide the answer to one request, yielding the I/O it needs."""
    delivery_id = ""
    try:
        if method != "POST":
            raise MethodNotAllowed(f"{method} not allowed; webhooks are POSTed")
        sig, did, evh, enc = collect_headers(headers)
        # Named in every log line, even for rejections; unsigned, so only ever logged with %r.
        delivery_id = did[0][:80] if did else ""
        for value in enc:
            if value.strip().lower() not in ("", "identity"):
                raise UnsupportedEncoding(f"Content-Encoding {value!r} is not accepted")
        if len(body) > hooks.max_body_size:
            raise PayloadTooLarge(f"body larger than {hooks.max_body_size} bytes")
        if not sig:
            raise InvalidSignature("X-Gptimg-Signature header missing")
        match = hooks.verifier.verify(body, sig[0]) if len(sig) == 1 else None
        if match is None:
            raise InvalidSignature("signature does not match the body")
        delivery_id = _single(did, "X-Gptimg-Delivery")
        if not _UUID.fullmatch(delivery_id):
            raise InvalidHeaders("X-Gptimg-Delivery is not a UUID")
        event_header = _single(evh, "X-Gptimg-Event")
        if not _EVENT_NAME.fullmatch(event_header):
            raise InvalidHeaders("X-Gptimg-Event is not an event name")
        key = hashlib.sha256(body).hexdigest()

        try:
            event = parse_event(strictjson.loads(body))
        except InvalidPayload as exc:
            # Signed but unusable: keep the raw body as a failed record for inspection.
            claim = yield Lease(Entry(key, delivery_id, event_header, None, body))
            if claim.status is ClaimStatus.CLAIMED:
                yield Fail(key, claim.token, f"invalid_payload: {exc}")
            raise
        if event.event != event_header:
            raise EventMismatch("X-Gptimg-Event disagrees with the signed body")
        _check_age(hooks, event, now)

        outage: StoreUnavailable | None = None
        if now >= hooks._next_prune:
            hooks._next_prune = now + hooks.prune_interval
            try:
                yield Prune(now - hooks.retention)
            except StoreUnavailable as exc:
                logger.warning("pruning the ledger failed; will try again later")
                # Claiming now would wait out the same outage a second time, past the
                # provider's 5 s timeout: settle on the outage at once.
                outage = exc

        data = getattr(event, "data", None)
        generation_id = getattr(data, "generation_id", None)
        defer = hooks.deferred
        try:
            if outage is not None:
                raise outage
            claim = yield Lease(Entry(key, delivery_id, event.event, generation_id, body), defer)
        except StoreUnavailable as exc:
            if not hooks.fail_open:
                raise
            logger.error(
                "ledger unavailable, running handlers WITHOUT dedup (fail-open; delivery %r): %s",
                delivery_id,
                exc,
            )
            delivery = Delivery(delivery_id, event.event, key, match, now, 1)
            return (yield from _run_unrecorded(hooks, event, delivery))
        status = claim.status
        if status is not ClaimStatus.CLAIMED:
            if status is ClaimStatus.DONE:
                logger.info("duplicate of %s (delivery %r): already done", key[:12], delivery_id)
                return DUPLICATE
            if status is ClaimStatus.DEAD:
                return DEAD
            if status is ClaimStatus.PENDING or defer:
                return QUEUED
            raise DeliveryInProgress("a copy of this delivery is being processed; retry later")

        delivery = Delivery(delivery_id, event.event, key, match, now, claim.attempt)
        return (yield from run_claimed(hooks, event, delivery, claim))
    except WebhookError as exc:
        if isinstance(exc, StoreUnavailable):
            logger.error("ledger unavailable, answering 503 (delivery %r): %s", delivery_id, exc)
        else:
            logger.warning("rejected %s: %s (delivery %r)", exc.code, exc, delivery_id)
        return error_response(exc)
    except Exception as exc:  # a bug of ours: still answer, never raise into the framework
        logger.exception("internal error (delivery %r)", delivery_id)
        return error_response(WebhookError(f"internal error: {type(exc).__name__}"))


def _run_unrecorded(
    hooks: Webhooks, event: Event, delivery: Delivery
) -> Generator[Command, Any, Response]:
    handlers = hooks.routes(event.event)
    error = yield Dispatch(event, delivery, handlers, "", ledger=False)
    if error is None:
        return UNRECORDED
    raise HandlerFailed(f"handler raised {type(error).__name__}")


def run_claimed(
    hooks: Webhooks,
    event: Event,
    delivery: Delivery,
    claim: Claim,
    backoff: Backoff | None = None,
    settle_until: float | None = None,
) -> Generator[Command, Any, Response]:
    """Run the handlers for a claimed record and settle it; shared with workers.

    With ``backoff`` (workers) a failure is retried later by a worker, or kept as dead
    once out of attempts, instead of being answered to the provider.
    """
    handlers = hooks.routes(event.event)
    error = yield Dispatch(event, delivery, handlers, claim.token, settle_until=settle_until)
    if error is None:
        return PROCESSED if handlers else IGNORED
    if isinstance(error, LeaseLost):
        raise error
    message = f"{type(error).__name__}: {error}"
    if backoff is not None:
        delay = backoff.delay(delivery.attempt)
        yield Fail(delivery.key, claim.token, message, retry_in=delay, dead=delay is None)
        if delay is None:
            return DEAD
        raise HandlerFailed(f"handler raised {type(error).__name__}; retry in {delay:.0f}s")
    yield Fail(delivery.key, claim.token, message)
    if (yield RecordFailure(hooks.failure_threshold)):
        logger.error(
            "handler failed for %s (delivery %r); answering 2xx to keep the endpoint from "
            "auto-disable: the record is kept as failed for local replay",
            delivery.event,
            delivery.id,
        )
        return FAILED_ACCEPTED
    raise HandlerFailed(f"handler raised {type(error).__name__}")
