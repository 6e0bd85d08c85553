"""The sans-I/O heart: bytes and headers in, a verified delivery or an answer out.

:func:`verify_request` is the pure verification step every adapter, the receiver and the
CLI's ``verify`` diagnosis share: method, framing, signature, headers, strict JSON and
the typed event, in that order. It does no I/O and raises only the library's own
errors. The answers (:class:`Response`) are built here once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import (
    EventMismatch,
    InvalidHeaders,
    InvalidPayload,
    InvalidSignature,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestRejected,
    StaleEvent,
    StoreUnavailable,
    UnsupportedEncoding,
    WebhookError,
)
from .events import Event, parse_event_json
from .ledger import Entry

if TYPE_CHECKING:
    from .signature import Match, Verifier

__all__ = [
    "DEAD",
    "DUPLICATE",
    "FAILED_ACCEPTED",
    "IGNORED",
    "PROCESSED",
    "QUEUED",
    "REJECTED_ACCEPTED",
    "RUNNING",
    "SIGNED_REJECTIONS",
    "UNRECORDED",
    "Headers",
    "Limits",
    "Response",
    "Signed",
    "Verified",
    "authenticate",
    "collect_headers",
    "decode",
    "environ_headers",
    "error_response",
    "event_time",
    "verify_request",
]

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
#: The same headers by their CGI names, as a WSGI environ (or Django's ``META``) has them.
_CGI_NAMES = tuple(("HTTP_" + name.upper().replace("-", "_"), name) for name in _WANTED)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_EVENT_NAME = re.compile(r"[a-z0-9_]{1,64}(?:\.[a-z0-9_]{1,64}){1,4}")
_JSON = (("content-type", "application/json"),)
#: Event names already seen to match _EVENT_NAME: the check once, not per delivery.
_EVENT_NAMES: set[str] = set()

#: Rejections that come after the signature matched: the provider sent them, so its
#: count of consecutive failures sees them and the endpoint guard counts them too.
SIGNED_REJECTIONS = (InvalidHeaders, EventMismatch, InvalidPayload, StaleEvent)


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
#: The reply deadline came while handlers still ran: they go on, holding the lease.
RUNNING = _ok(202, "processing")
DEAD = _ok(200, "dead")
#: The endpoint guard answered 2xx for a handler failure; a runner retries it later.
FAILED_ACCEPTED = _ok(200, "failed_accepted")
#: The endpoint guard answered 2xx for a signed delivery it had to refuse.
REJECTED_ACCEPTED = _ok(200, "rejected_accepted")
#: Fail-open mode ran the handlers while the ledger was down: nothing was recorded.
UNRECORDED = _ok(200, "processed_unrecorded")

# The store's own words (hosts, paths, SQL) go to the log, never to the caller.
_STORE_MESSAGE = "the delivery ledger is unavailable; retry later"


def error_response(exc: WebhookError) -> Response:
    """Map an error of the tree to its HTTP answer."""
    headers: tuple[tuple[str, str], ...] = _JSON
    message = str(exc) or exc.code
    if isinstance(exc, MethodNotAllowed):
        headers += (("allow", "POST"),)
    elif isinstance(exc, StoreUnavailable):
        headers += (("retry-after", str(exc.retry_after)),)
        message = _STORE_MESSAGE
    elif exc.status >= 500:
        message = exc.code  # handler and internal errors: details are for the log
    body = json.dumps({"ok": False, "error": exc.code, "message": message})
    return Response(exc.status, headers, body.encode())


@dataclass(frozen=True, slots=True)
class Limits:
    """What :func:`verify_request` checks against (a receiver's settings)."""

    verifier: Verifier
    max_body_size: int
    max_event_age: float | None = None
    clock_skew: float = 300.0


@dataclass(frozen=True, slots=True)
class Verified:
    """A delivery whose signature matched and whose body is a valid event."""

    delivery_id: str
    event: Event
    match: Match
    #: The ledger entry: keyed by the SHA-256 of the signed body.
    entry: Entry

    @property
    def event_name(self) -> str:
        return self.event.event

    @property
    def key(self) -> str:
        return self.entry.key


def collect_headers(headers: Headers) -> tuple[list[str], ...]:
    """Pick the headers the protocol reads, keeping every repeated value."""
    if type(headers) is list:
        # ASGI's shape: lowercase byte names. When no name repeats and none has an
        # uppercase letter, a dict built in C finds all four without a Python loop.
        try:
            named: dict[Any, Any] = dict(headers)
            if len(named) == len(headers):
                joined = b"\n".join(named)
                if joined.lower() == joined:
                    get = named.get
                    sig, did, evh, enc = (
                        get(b"x-gptimg-signature"),
                        get(b"x-gptimg-delivery"),
                        get(b"x-gptimg-event"),
                        get(b"content-encoding"),
                    )
                    return (
                        [] if sig is None else [sig.decode("latin-1")],
                        [] if did is None else [did.decode("latin-1")],
                        [] if evh is None else [evh.decode("latin-1")],
                        [] if enc is None else [enc.decode("latin-1")],
                    )
        except (TypeError, ValueError, AttributeError):
            pass  # text names or values, or not pairs: the general loop decides
    found: tuple[list[str], ...] = ([], [], [], [])
    # A list (ASGI, WSGI adapters) skips the Mapping test, an ABC check.
    items = (
        headers if type(headers) is list or not isinstance(headers, Mapping) else headers.items()
    )
    by_bytes, by_text = _WANTED_BYTES.get, _WANTED.get
    for name, value in items:
        slot = by_bytes(name.lower()) if isinstance(name, bytes) else by_text(name.lower())
        if slot is not None:
            found[slot].append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return found


def environ_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Pick the headers the protocol reads from a WSGI environ or Django's ``META``.

    Only these four: a server's environ holds a few dozen keys, and copying them all was
    the largest part of a WSGI adapter's own cost. WSGI has folded repeated values with
    commas already; :func:`verify_request` refuses such values.
    """
    return [(name, environ[key]) for key, name in _CGI_NAMES if key in environ]


def _single(values: list[str], name: str) -> str:
    if not values:
        raise InvalidHeaders(f"{name} header missing")
    if len(values) > 1:
        raise InvalidHeaders(f"{name} header repeated")
    return values[0]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=timezone.utc)


def event_time(event: Event) -> datetime | None:
    """Return the signed time an event happened: ``data.completedAt``, else ``data.createdAt``.

    Read generically, so events this version does not know are judged the same way.
    """
    stamp = event.timestamp
    if stamp is not None:
        return stamp
    data = getattr(event, "data", None)
    if isinstance(data, dict):
        return _parse_time(data.get("completedAt")) or _parse_time(data.get("createdAt"))
    return None


def _check_age(limits: Limits, event: Event, now: float) -> None:
    if limits.max_event_age is None:
        return
    stamp = event_time(event)
    if stamp is None:
        # Nothing signed to judge by: accepted, and still deduplicated by the ledger for
        # its whole retention. Refusing it would turn every new, timestamp-less event
        # type into a failure the provider counts.
        return
    age = now - stamp.timestamp()
    if age > limits.max_event_age + limits.clock_skew:
        raise StaleEvent(f"event is {age:.0f}s old (max {limits.max_event_age:.0f}s)")
    if age < -limits.clock_skew:
        raise StaleEvent(f"event is {-age:.0f}s in the future")


class Signed(NamedTuple):
    """A request whose signature matched its body, with well-formed headers; not parsed yet.

    What :func:`authenticate` returns, so a receiver can answer a body its ledger already
    holds as done before paying for the parse (see :func:`decode`).
    """

    delivery_id: str
    #: The ``X-Gptimg-Event`` header: unsigned, compared to the body by :func:`decode`.
    event_name: str
    match: Match
    #: The ledger key: the SHA-256 of the signed body.
    key: str
    body: bytes


def authenticate(limits: Limits, method: str, headers: Headers, body: bytes) -> Signed:
    """Check method, framing, signature and headers; raise the :class:`RequestRejected`.

    The signature is checked before anything else the caller controls, so an
    unauthenticated caller learns nothing more.
    """
    if method != "POST":
        raise MethodNotAllowed(f"{method} not allowed; webhooks are POSTed")
    sig, did, evh, enc = collect_headers(headers)
    for value in enc:
        if value.strip().lower() not in ("", "identity"):
            raise UnsupportedEncoding("Content-Encoding is not accepted; send the raw body")
    if len(body) > limits.max_body_size:
        raise PayloadTooLarge(f"body larger than {limits.max_body_size} bytes")
    if not sig:
        raise InvalidSignature("X-Gptimg-Signature header missing")
    match = limits.verifier.verify(body, sig[0]) if len(sig) == 1 else None
    if match is None:
        raise InvalidSignature("signature does not match the body")
    delivery_id = _single(did, "X-Gptimg-Delivery")
    if not _UUID.fullmatch(delivery_id):
        raise InvalidHeaders("X-Gptimg-Delivery is not a UUID")
    event_header = _single(evh, "X-Gptimg-Event")
    if event_header not in _EVENT_NAMES:
        if not _EVENT_NAME.fullmatch(event_header):
            raise InvalidHeaders("X-Gptimg-Event is not an event name")
        if len(_EVENT_NAMES) < 256:  # the provider sends a handful; a flood adds none
            _EVENT_NAMES.add(event_header)
    return Signed(delivery_id, event_header, match, hashlib.sha256(body).hexdigest(), body)


def decode(limits: Limits, signed: Signed, now: float) -> Verified:
    """Parse a signed body into its typed event; raise the :class:`RequestRejected`.

    A body that is not a valid event raises :class:`InvalidPayload` with ``exc.entry``
    set, so the raw body can be kept as a failed record. Every rejection raised here
    carries ``exc.key``, the body's ledger key.
    """
    delivery_id, event_header, match, key, body = signed
    try:
        event = parse_event_json(body, event_header)
        if event.event != event_header:
            raise EventMismatch("X-Gptimg-Event disagrees with the signed body")
        _check_age(limits, event, now)
    except RequestRejected as exc:
        exc.key = key
        if isinstance(exc, InvalidPayload):
            exc.entry = Entry(key, delivery_id, event_header, None, body)
        raise
    generation_id = getattr(getattr(event, "data", None), "generation_id", None)
    return Verified(
        delivery_id, event, match, Entry(key, delivery_id, event.event, generation_id, body)
    )


def verify_request(
    limits: Limits, method: str, headers: Headers, body: bytes, now: float
) -> Verified:
    """Verify one request; raise the :class:`RequestRejected` that answers it.

    :func:`authenticate` then :func:`decode`: method, framing, signature, headers,
    strict JSON and the typed event, in that order.
    """
    return decode(limits, authenticate(limits, method, headers, body), now)
