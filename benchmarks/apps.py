"""The servers the HTTP suite runs: each adapter, and its hand-written twin doing the same
work (HMAC check, a bounded dedup dict, ``model_validate_json``, the handler, a JSON answer).

Built inside the server process from environment variables:

- ``BENCH_STORE``: the library's ledger URL (``memory://...`` or ``sqlite:///...``)
- ``BENCH_HANDLER``: ``sync`` (default), ``async``, or ``sleep`` (``time.sleep(1)``)
- ``BENCH_MODE``: ``inline`` (default) or ``deferred`` (a worker runs in the process)
- ``BENCH_DEADLINE``: the reply deadline in seconds, or ``none``
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gptimg_webhooks import Webhooks
from gptimg_webhooks._core.events import GenerationSucceeded

from .common import EVENT, KEY, SECRET

PATH = "/hooks/gptimg"
ANSWER = b'{"ok":true,"status":"processed"}'
REFUSED = b'{"ok":false,"error":"invalid_signature"}'


def _kind() -> str:
    return os.environ.get("BENCH_HANDLER", "sync")


def _sync_handler(event: object) -> None:
    if _kind() == "sleep":
        time.sleep(1.0)


async def _async_handler(event: object) -> None:
    if _kind() == "sleep":
        await asyncio.sleep(1.0)


def receiver() -> Webhooks:
    """The library's receiver, as the environment describes it."""
    deadline = os.environ.get("BENCH_DEADLINE", "4.0")
    hooks = Webhooks(
        SECRET,
        store=os.environ.get("BENCH_STORE", "memory://?max_records=1000000"),
        include_shared=False,
        reply_deadline=None if deadline == "none" else float(deadline),
        mode="deferred" if os.environ.get("BENCH_MODE") == "deferred" else "inline",
    )
    hooks.on(EVENT)(_async_handler if _kind() == "async" else _sync_handler)
    return hooks


class Twin:
    """The hand-written receiver's logic, shared by every framework's twin."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.limit = limit

    def verify(self, body: bytes, signature: str | None) -> bool:
        expected = hmac.new(KEY, body, hashlib.sha256).hexdigest()
        return signature is not None and hmac.compare_digest(expected, signature)

    def fresh(self, body: bytes) -> tuple[str, GenerationSucceeded] | None:
        """Return the dedup key and the typed event, or None for a duplicate."""
        key = hashlib.sha256(body).hexdigest()
        if key in self.seen:
            return None
        return key, GenerationSucceeded.model_validate_json(body)

    def done(self, key: str) -> None:
        self.seen[key] = None
        if len(self.seen) > self.limit:
            self.seen.popitem(last=False)


# ASGI (uvicorn) -------------------------------------------------------------------------


def library_starlette() -> Any:
    """The library as a Starlette app mounts it: ``WebhookMiddleware``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from gptimg_webhooks.asgi import WebhookMiddleware

    hooks = receiver()
    lifespan = None
    if hooks.deferred:
        from gptimg_webhooks.worker import Worker

        worker = Worker(hooks, concurrency=16, poll_interval=0.05)

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            async with worker.lifespan(app):
                yield

    return Starlette(middleware=[Middleware(WebhookMiddleware, receiver=hooks)], lifespan=lifespan)


def twin_starlette() -> Any:
    """A hand-written Starlette route: async handler awaited, sync one in the threadpool."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    twin = Twin()
    is_async = _kind() == "async"

    async def receive(request: Request) -> Response:
        body = await request.body()
        if not twin.verify(body, request.headers.get("x-gptimg-signature")):
            return Response(REFUSED, 401, media_type="application/json")
        found = twin.fresh(body)
        if found is not None:
            key, event = found
            if is_async:
                await _async_handler(event)
            else:
                await run_in_threadpool(_sync_handler, event)
            twin.done(key)
        return Response(ANSWER, media_type="application/json")

    return Starlette(routes=[Route(PATH, receive, methods=["POST"])])


# Flask (gunicorn, one sync worker) ------------------------------------------------------


def library_flask() -> Any:
    from flask import Flask

    from gptimg_webhooks.flask import GptimgWebhooks

    app = Flask("bench_library")
    GptimgWebhooks(app, receiver=receiver())
    return app


def twin_flask() -> Any:
    from flask import Flask, Response, request

    app = Flask("bench_twin")
    twin = Twin()

    @app.post(PATH)
    def receive() -> Response:
        body = request.get_data()
        if not twin.verify(body, request.headers.get("X-Gptimg-Signature")):
            return Response(REFUSED, 401, mimetype="application/json")
        found = twin.fresh(body)
        if found is not None:
            key, event = found
            _sync_handler(event)
            twin.done(key)
        return Response(ANSWER, mimetype="application/json")

    return app


# Django (gunicorn WSGI, uvicorn ASGI): settings in benchmarks.django_site ---------------


def django_twin_view(request: Any) -> Any:
    from django.http import HttpResponse

    twin = _django_twin
    body = request.body
    if not twin.verify(body, request.headers.get("X-Gptimg-Signature")):
        return HttpResponse(REFUSED, status=401, content_type="application/json")
    found = twin.fresh(body)
    if found is not None:
        key, event = found
        _sync_handler(event)
        twin.done(key)
    return HttpResponse(ANSWER, content_type="application/json")


_django_twin = Twin()
