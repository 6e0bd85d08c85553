"""Pure ASGI adapter for Starlette, FastAPI and any ASGI server.

::

    app.add_middleware(WebhookMiddleware, receiver=hooks)          # Starlette / FastAPI
    Mount("/hooks/gptimg", app=WebhookApp(hooks))                  # or mount it yourself
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._core.errors import InvalidPayload, PayloadTooLarge, RequestRejected
from ._core.protocol import Response, error_response
from ._core.receiver import Webhooks

__all__ = ["WebhookApp", "WebhookMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """Read the body while it streams in; None as soon as it passes ``limit``.

    Raise :class:`InvalidPayload` when the client disconnects before the body ends.
    """
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Cut short: even a body that happens to verify is not what was framed.
            raise InvalidPayload("body incomplete: the client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _serve(receiver: Webhooks, scope: Scope, receive: Receive, send: Send) -> None:
    method = scope["method"]
    answer: Response
    try:
        body = await _read_body(scope, receive, receiver.max_body_size) if method == "POST" else b""
    except RequestRejected as exc:
        answer = error_response(exc)
    else:
        if body is None:
            answer = error_response(PayloadTooLarge("body larger than the size cap"))
        else:
            answer = await receiver.handle_async(method, scope["headers"], body)
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


class WebhookMiddleware:
    """Answer webhook POSTs on ``receiver.path``; pass every other request through untouched."""

    def __init__(self, app: ASGIApp, receiver: Webhooks | None = None) -> None:
        self.app = app
        self.receiver = receiver if receiver is not None else Webhooks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.receiver.path:
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
