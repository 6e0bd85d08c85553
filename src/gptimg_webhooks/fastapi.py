"""Show the webhook in a FastAPI app's OpenAPI document.

::

    app = FastAPI()
    app.add_middleware(WebhookMiddleware, receiver=hooks)   # serves the deliveries
    document_webhooks(app, hooks)                            # documents them in /openapi.json

The middleware answers the deliveries before FastAPI routes anything, so FastAPI's schema
knows nothing of them. :func:`document_webhooks` adds, for documentation only, the events
under OpenAPI's ``webhooks`` (one entry per event, with its typed body) and the webhook path's
``POST`` operation with every answer the receiver gives. It adds no route: requests are served
exactly as before. Needs the ``[fastapi]`` extra.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from ._core.events import GenerationFailed, GenerationSucceeded
from ._core.receiver import Webhooks

__all__ = ["WebhookAccepted", "WebhookRefused", "document_webhooks"]

_DEFAULT_PATH = "/hooks/gptimg"


class WebhookAccepted(BaseModel):
    """The receiver's answer to a delivery it accepted (2xx)."""

    ok: Literal[True] = True
    status: Literal[
        "processed", "ignored", "duplicate", "queued", "processing", "dead", "failed_accepted",
        "rejected_accepted", "processed_unrecorded",
    ] = Field(description="What became of the delivery; see the HTTP contract.")  # fmt: skip


class WebhookRefused(BaseModel):
    """The receiver's answer to a delivery it refused or could not complete (4xx, 5xx)."""

    ok: Literal[False] = False
    error: str = Field(description="A stable code, e.g. `invalid_signature`.")
    message: str = Field(description="A short human-readable reason.")


def _refused(description: str) -> dict[str, Any]:
    return {"model": WebhookRefused, "description": description}


#: Every answer of the HTTP contract, as OpenAPI responses.
RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": WebhookAccepted,
        "description": "`queued` for the workers (deferred mode), or `processing`: the handlers "
        "still run at the reply deadline and go on.",
    },
    400: _refused(
        "`invalid_headers`, `event_mismatch`, `invalid_payload` (not strict JSON or not a valid "
        "event) or `stale_event`."
    ),
    401: _refused("`invalid_signature`: the signature header is missing, malformed or wrong."),
    404: _refused("`unknown_endpoint`: no account is served at this path (with `accounts=`)."),
    409: _refused("`delivery_in_progress`: another copy of this delivery is being processed."),
    413: _refused("`payload_too_large`: the body is larger than the size cap (1 MiB)."),
    415: _refused("`unsupported_encoding`: a `Content-Encoding` other than identity."),
    500: _refused("`handler_failed`: a handler raised; the provider retries."),
    503: _refused("`store_unavailable`: the ledger cannot be reached; comes with `Retry-After`."),
}

_OK = (
    "`processed` (handlers ran), `ignored` (no handler), `duplicate` (already done, handlers "
    "not run), `dead`, `failed_accepted` or `rejected_accepted` (the auto-disable guard) or "
    "`processed_unrecorded` (fail open)."
)

_HEADERS = (
    (
        "x_gptimg_signature",
        "X-Gptimg-Signature",
        "Lowercase hex HMAC-SHA256 of the raw body, keyed with the `whsec_` secret as UTF-8.",
    ),
    ("x_gptimg_delivery", "X-Gptimg-Delivery", "UUID of the delivery; a retry keeps it."),
    ("x_gptimg_event", "X-Gptimg-Event", "The event name; must equal the body's `event`."),
)

_PATH_DESCRIPTION = (
    "Verified (HMAC-SHA256 of the raw body), recorded once in the ledger, parsed and "
    "dispatched to the handlers. The signature is checked first. An unknown event name is "
    "answered 200 `ignored` unless a catch-all handler takes it."
)

_EVENTS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("generation.succeeded", GenerationSucceeded),
    ("generation.failed", GenerationFailed),
)


def _endpoint(body: Any) -> Callable[..., WebhookAccepted]:
    """Return a never-served endpoint whose signature FastAPI documents."""

    def endpoint(**_: Any) -> WebhookAccepted:  # pragma: no cover - documentation only
        raise NotImplementedError("documentation only: the receiver serves this path")

    params = [inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body)]
    params += [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[str, Header(alias=alias, description=text)],
        )
        for name, alias, text in _HEADERS
    ]
    endpoint.__signature__ = inspect.Signature(params, return_annotation=WebhookAccepted)  # type: ignore[attr-defined]
    return endpoint


def _add(
    router: APIRouter,
    path: str,
    body: Any,
    *,
    operation_id: str,
    summary: str,
    description: str,
    tags: list[str],
) -> None:
    router.add_api_route(
        path,
        _endpoint(body),
        methods=["POST"],
        operation_id=operation_id,
        description=description,
        response_model=WebhookAccepted,
        responses=RESPONSES,
        response_description=_OK,
        summary=summary,
        tags=list(tags),
    )


def _drop_validation_answers(operations: dict[str, Any]) -> None:
    # FastAPI documents a 422 for every operation with parameters; the receiver never sends one.
    for operation in operations.values():
        operation.get("responses", {}).pop("422", None)


def document_webhooks(
    app: FastAPI,
    hooks: Webhooks | None = None,
    *,
    path: str | None = None,
    tags: Sequence[str] = ("webhooks",),
) -> None:
    """Document the webhook in ``app``'s OpenAPI schema; serve nothing.

    Adds ``generation.succeeded`` and ``generation.failed`` to the schema's ``webhooks``
    (OpenAPI 3.1) with their typed bodies and headers, and a ``POST`` operation at the
    webhook path (``path``, else ``hooks.path``, else ``/hooks/gptimg``) listing every answer
    of the HTTP contract (200, 202, 400, 401, 409, 413, 415, 500, 503).
    """
    where = path or (hooks.path if hooks is not None else _DEFAULT_PATH)
    tag_list = list(tags)
    for name, model in _EVENTS:
        _add(
            app.webhooks,
            name,
            model,
            operation_id=f"gptimg_{name.replace('.', '_')}",
            summary=f"{name} delivery",
            description=inspect.getdoc(model) or name,
            tags=tag_list,
        )

    operation = APIRouter()  # never included in the app: its route only feeds the schema
    either = Annotated[GenerationSucceeded | GenerationFailed, Field(discriminator="event")]
    _add(
        operation,
        where,
        either,
        operation_id="gptimg_webhook",
        summary="Receive a gptimage2.plus delivery",
        description=_PATH_DESCRIPTION,
        tags=tag_list,
    )

    app.openapi_schema = None  # a schema built earlier would not show the webhook
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        extra = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            routes=operation.routes,
        )
        schema.setdefault("paths", {}).setdefault(where, {}).update(extra["paths"][where])
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for key, value in extra.get("components", {}).get("schemas", {}).items():
            components.setdefault(key, value)
        _drop_validation_answers(schema["paths"][where])
        for hook in schema.get("webhooks", {}).values():
            _drop_validation_answers(hook)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
