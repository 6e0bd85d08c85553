"""Receive gptimage2.plus webhooks: verified, recorded once, typed, dispatched.

::

    from gptimg_webhooks import GenerationSucceeded, on

    @on("generation.succeeded")
    def save(event: GenerationSucceeded) -> None:
        ...

Layout: ``_core`` (sans-I/O: signature, events, protocol, receiver), ``stores`` (ledger
backends by URL scheme), and one adapter per framework (``asgi``, ``flask``, ``django``).
"""

from __future__ import annotations

from ._core.accounts import Account, UnknownEndpoint
from ._core.errors import (
    ConfigurationError,
    DeliveryInProgress,
    EventMismatch,
    HandlerFailed,
    InvalidHeaders,
    InvalidPayload,
    InvalidSignature,
    LeaseLost,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestRejected,
    StaleEvent,
    StoreUnavailable,
    TransactionAborted,
    UnsupportedEncoding,
    WebhookError,
)
from ._core.events import (
    Event,
    Generation,
    GenerationFailed,
    GenerationSucceeded,
    Output,
    UnknownEvent,
    parse_event,
)
from ._core.handlers import Delivery, Registry
from ._core.protocol import Response, Verified, verify_request
from ._core.receiver import Webhooks, shared_registry
from ._core.signature import Match, sign, verify
from .stores import open_store

__version__ = "0.1.0"

__all__ = [
    "Account",
    "ConfigurationError",
    "Delivery",
    "DeliveryInProgress",
    "Event",
    "EventMismatch",
    "Generation",
    "GenerationFailed",
    "GenerationSucceeded",
    "HandlerFailed",
    "InvalidHeaders",
    "InvalidPayload",
    "InvalidSignature",
    "LeaseLost",
    "Match",
    "MethodNotAllowed",
    "Output",
    "PayloadTooLarge",
    "Registry",
    "RequestRejected",
    "Response",
    "StaleEvent",
    "StoreUnavailable",
    "TransactionAborted",
    "UnknownEndpoint",
    "UnknownEvent",
    "UnsupportedEncoding",
    "Verified",
    "WebhookError",
    "Webhooks",
    "__version__",
    "on",
    "on_error",
    "open_store",
    "parse_event",
    "shared_registry",
    "sign",
    "verify",
    "verify_request",
]

#: Register a handler on the shared registry that every receiver runs.
on = shared_registry.on
#: Register an error hook on the shared registry.
on_error = shared_registry.on_error
