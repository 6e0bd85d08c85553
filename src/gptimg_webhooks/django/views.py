"""The webhook view: Django request -> ``Webhooks.handle`` / ``handle_async`` -> response.

:data:`webhook_view` is sync under WSGI and async under ASGI. Django picks how to call a
view with ``iscoroutinefunction(view)`` on every request, in the thread that serves it;
the view answers True only where an event loop runs, that is under ASGI, so no thread
is held while a delivery waits on the ledger or on async handlers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse

from .._core.body import BodyReader, refuse
from .._core.errors import RequestRejected, StoreUnavailable, WebhookError
from .._core.protocol import Response, environ_headers, error_response
from .._core.receiver import Webhooks
from .conf import receiver

__all__ = ["WebhookView", "webhook_view"]

logger = logging.getLogger("gptimg_webhooks")


def _probe() -> None: ...


#: Whatever attribute(s) asgiref's marker sets on this Python (it differs by version).
_ASYNC_MARKS: dict[str, Any] = dict(vars(markcoroutinefunction(_probe)))


def _response(answer: Response) -> HttpResponse:
    return HttpResponse(answer.body, status=answer.status, headers=dict(answer.headers))


def _prepare(request: HttpRequest) -> tuple[Webhooks, bytes] | HttpResponse:
    """Get the receiver and the raw body, or the answer when either is unavailable."""
    try:
        hooks = receiver()
    except WebhookError as exc:
        logger.error("GPTIMG_WEBHOOKS is misconfigured (run manage.py check): %s", exc)
        return _response(error_response(StoreUnavailable("receiver misconfigured")))
    if request.method != "POST":
        return hooks, b""
    try:
        return hooks, _read_body(request, hooks.max_body_size)
    except RequestRejected as exc:
        return _response(refuse(exc, request.META.get("HTTP_X_GPTIMG_DELIVERY", "")))


def _read_body(request: HttpRequest, limit: int) -> bytes:
    """Read the raw body, never through ``request.POST``; stop at the cap + 1 byte.

    Under WSGI Django reads nothing without a Content-Length, so a chunked body is read
    from ``wsgi.input`` itself, until the server ends the de-chunked stream (gunicorn does;
    elsewhere best effort). Under ASGI Django has spooled the whole body already.
    """
    meta = request.META
    upload_max = settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # the site's own cap applies too
    reader = BodyReader(limit if upload_max is None else min(limit, upload_max))
    wsgi_input = meta.get("wsgi.input")
    reader.check_length(
        meta.get("CONTENT_LENGTH"),
        meta.get("HTTP_TRANSFER_ENCODING"),
        stream_ends=wsgi_input is None or bool(meta.get("wsgi.input_terminated")),
    )
    if reader.expected is None and wsgi_input is not None:
        return reader.read_from(wsgi_input.read)
    return reader.read_from(request.read)


class WebhookView:
    """Receive deliveries; CSRF-exempt, login not required, outside ATOMIC_REQUESTS."""

    csrf_exempt = True  # CsrfViewMiddleware: the signature authenticates the request
    login_required = False  # Django 5.1+ LoginRequiredMiddleware

    @property
    def _non_atomic_requests(self) -> set[str]:
        # The ledger claim must commit at once, whatever ATOMIC_REQUESTS says.
        return set(connections.settings)

    def __getattr__(self, name: str) -> Any:
        if name in _ASYNC_MARKS and _in_event_loop():
            return _ASYNC_MARKS[name]
        raise AttributeError(name)

    def __call__(self, request: HttpRequest, **route: Any) -> Any:
        # route: the URL's <account>, if any; the receiver reads the path itself.
        if _in_event_loop():
            return self.respond_async(request)
        return self.respond(request)

    def respond(self, request: HttpRequest) -> HttpResponse:
        ready = _prepare(request)
        if isinstance(ready, HttpResponse):
            return ready
        hooks, body = ready
        headers = environ_headers(request.META)
        answer = hooks.handle(request.method or "", headers, body, path=request.path)
        return _response(answer)

    async def respond_async(self, request: HttpRequest) -> HttpResponse:
        ready = _prepare(request)  # Django's ASGI handler has spooled the body already
        if isinstance(ready, HttpResponse):
            return ready
        hooks, body = ready
        answer = await hooks.handle_async(
            request.method or "", environ_headers(request.META), body, path=request.path
        )
        return _response(answer)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


webhook_view = WebhookView()
