"""The one error tree; every class carries the HTTP answer it maps to.

::

    WebhookError                       500  internal_error
    ├── ConfigurationError             500  configuration_error (raised at start-up)
    ├── RequestRejected                400  bad_request
    │   ├── InvalidSignature           401  invalid_signature
    │   ├── InvalidHeaders             400  invalid_headers
    │   ├── EventMismatch              400  event_mismatch
    │   ├── InvalidPayload             400  invalid_payload
    │   ├── StaleEvent                 400  stale_event
    │   ├── UnknownEndpoint            404  unknown_endpoint (accounts.py: no account there)
    │   ├── MethodNotAllowed           405  method_not_allowed
    │   ├── PayloadTooLarge            413  payload_too_large
    │   └── UnsupportedEncoding        415  unsupported_encoding
    ├── DeliveryInProgress             409  delivery_in_progress
    │   └── LeaseLost                  409  lease_lost
    ├── HandlerFailed                  500  handler_failed
    │   └── TransactionAborted         500  handler_failed (the handler's own SQL failed)
    └── StoreUnavailable               503  store_unavailable (with Retry-After)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .ledger import Entry

__all__ = [
    "ConfigurationError",
    "DeliveryInProgress",
    "EventMismatch",
    "HandlerFailed",
    "InvalidHeaders",
    "InvalidPayload",
    "InvalidSignature",
    "LeaseLost",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "RequestRejected",
    "StaleEvent",
    "StoreUnavailable",
    "TransactionAborted",
    "UnsupportedEncoding",
    "WebhookError",
]


class WebhookError(Exception):
    """Base of every error this library raises."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"


class ConfigurationError(WebhookError, ValueError):
    """Raise at start-up when the receiver cannot work as configured."""

    code = "configuration_error"


class RequestRejected(WebhookError):
    """Refuse a request; the caller's fault."""

    status = 400
    code = "bad_request"
    #: The ledger key of the body, once its signature matched: a receiver answers a
    #: rejected body it already holds as done as a duplicate.
    key: str | None = None


class InvalidSignature(RequestRejected):
    """Signature header missing, malformed or not matching any secret."""

    status = 401
    code = "invalid_signature"


class InvalidHeaders(RequestRejected):
    """Delivery or event header missing, repeated or malformed."""

    code = "invalid_headers"


class EventMismatch(RequestRejected):
    """The unsigned event header disagrees with the signed body."""

    code = "event_mismatch"


class InvalidPayload(RequestRejected):
    """Signed body that is not strict JSON or not a valid event."""

    code = "invalid_payload"
    #: The ledger entry of the signed body, to keep it as a failed record.
    entry: Entry | None = None


class StaleEvent(RequestRejected):
    """Signed timestamps lie outside the accepted age window."""

    code = "stale_event"


class MethodNotAllowed(RequestRejected):
    """Anything but POST on the webhook path."""

    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(RequestRejected):
    """Body above the size cap."""

    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(RequestRejected):
    """A Content-Encoding other than identity; never decompressed."""

    status = 415
    code = "unsupported_encoding"


class DeliveryInProgress(WebhookError):
    """A copy of this delivery holds the lease; the provider should retry later."""

    status = 409
    code = "delivery_in_progress"


class LeaseLost(DeliveryInProgress):
    """The lease expired while handlers ran and another copy took the record over.

    On a transactional store the handlers' writes were rolled back with it.
    """

    code = "lease_lost"


class HandlerFailed(WebhookError):
    """A handler raised; the record is kept as failed for retry or replay."""

    code = "handler_failed"


class TransactionAborted(HandlerFailed):
    """A handler left the ledger's transaction unusable (it caught its own SQL error).

    The handler's failure, not the store's: rolled back and recorded as failed.
    """


class StoreUnavailable(WebhookError):
    """The ledger cannot be reached; fail closed so the provider retries."""

    status = 503
    code = "store_unavailable"
    retry_after: ClassVar[int] = 30
