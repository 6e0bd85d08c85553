"""Pure ASGI adapter for Starlette, FastAPI and any ASGI server.

::

    app.add_middleware(WebhookMiddleware, receiver=hooks)          # Starlette / FastAPI
    Mount("/hooks/gptimg", app=WebhookApp(hooks))                  # or mount it yourself
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._core.body import BodyReader, refuse
from ._core.errors import RequestRejected
from ._core.protocol import Response
from ._core.receiver import Webhooks

__all__ = ["WebhookApp", "WebhookMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("gptimg_webhooks")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class _Disconnected(Exception):
    """The client went away before the body ended."""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the body as it streams in, into one buffer; refuse it once it passes ``limit``."""
    reader = BodyReader(limit)
    # The server ends the body at its Content-Length and de-chunks chunked ones.
    reader.check_length(_header(scope, b"content-length"), _header(scope, b"transfer-encoding"))
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        reader.feed(message.get("body", b""))
        if not message.get("more_body", False):
            return reader.done()


async def _serve(receiver: Webhooks, scope: Scope, receive: Receive, send: Send) -> None:
    method = scope["method"]
    try:
        body = await _read_body(scope, receive, receiver.max_body_size) if method == "POST" else b""
    except RequestRejected as exc:
        answer: Response = refuse(exc, _delivery_id(scope))
    except _Disconnected:
        # Nobody is left to answer: no response, no traceback.
        logger.info("client disconnected mid-body (delivery %r)", _delivery_id(scope))
        return
    else:
        answer = await receiver.handle_async(method, scope["headers"], body, path=scope["path"])
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def _delivery_id(scope: Scope) -> str:
    return (_header(scope, b"x-gptimg-delivery") or b"")[:80].decode("latin-1")


class WebhookMiddleware:
    """Answer webhook POSTs on ``receiver.path`` (and each account's path, with ``accounts=``);
    pass every other request through untouched."""

    def __init__(self, app: ASGIApp, receiver: Webhooks | None = None) -> None:
        self.app = app
        self.receiver = receiver if receiver is not None else Webhooks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.receiver.serves(scope["path"]):
            await _serve(self.receiver, scope, receive, send)
        else:
            await self.app(scope, receive, send)


class WebhookApp:
    """A standalone ASGI app that answers every HTTP request it gets as a delivery."""

    def __init__(self, receiver: Webhooks | None = None) -> None:
        self.receiver = receiver if receiver is not None else Webhooks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _serve(self.receiver, scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
