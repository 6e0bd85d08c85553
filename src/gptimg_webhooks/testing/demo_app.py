"""The Starlette gallery behind ``examples/starlette_app`` and ``gptimg-webhooks demo``.

It lives in the package so that the ``demo`` command runs it from an installed wheel;
the example imports it. Needs the ``starlette`` extra.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from gptimg_webhooks._core.events import Event, GenerationFailed, GenerationSucceeded
from gptimg_webhooks._core.handlers import Delivery
from gptimg_webhooks._core.receiver import Webhooks
from gptimg_webhooks.asgi import WebhookMiddleware
from gptimg_webhooks.testing.gallery import Gallery, demo_plan, render_gallery

__all__ = ["create_app", "demo_behaviour"]


async def demo_behaviour(event: Event, delivery: Delivery) -> None:
    """Play :func:`~gptimg_webhooks.testing.gallery.demo_plan` (slow, flaky, stalling ids)."""
    seconds, error = demo_plan(event, delivery.attempt)
    if seconds:
        await asyncio.sleep(seconds)
    if error:
        raise RuntimeError(error)


def create_app(hooks: Webhooks, gallery: Gallery) -> Starlette:
    """Record every generation event in ``gallery``; serve it at ``/`` and ``/generations``."""

    @hooks.on("generation.succeeded", "generation.failed")
    async def record(event: GenerationSucceeded | GenerationFailed, delivery: Delivery) -> None:
        await demo_behaviour(event, delivery)
        await asyncio.to_thread(gallery.add, event)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(render_gallery(await asyncio.to_thread(gallery.rows)))

    async def generations(request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(gallery.rows))

    return Starlette(
        routes=[Route("/", index), Route("/generations", generations)],
        middleware=[Middleware(WebhookMiddleware, receiver=hooks)],
    )
