"""``listen``: a local receiver that verifies, pretty-prints and optionally relays deliveries."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

import click
from rich.markup import escape

from gptimg_webhooks._core.events import Event
from gptimg_webhooks._core.handlers import Delivery
from gptimg_webhooks._core.receiver import Webhooks
from gptimg_webhooks.asgi import WebhookApp
from gptimg_webhooks.cli._common import (
    console,
    json_option,
    one_line_logs,
    secret_env_option,
    secrets_from_env,
)
from gptimg_webhooks.cli._server import pick_port, serve

__all__ = ["listen"]

#: The raw request being handled: (headers, body chunks, notes), for relaying it
#: unchanged and for saying on its answer line why a relay failed.
_request: ContextVar[tuple[list[tuple[bytes, bytes]], list[bytes], dict[str, str]]] = ContextVar(
    "request"
)
_HOP_BY_HOP = {b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}


class Listener:
    """The ASGI adapter, wrapped to keep the raw request and to log every answer."""

    def __init__(self, hooks: Webhooks, forward_to: str | None, as_json: bool) -> None:
        self.app = WebhookApp(hooks)
        self.hooks = hooks
        self.forward_to = forward_to
        self.as_json = as_json
        hooks.on("*")(self.handle)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        notes: dict[str, str] = {}
        _request.set((list(scope["headers"]), chunks, notes))
        answer: dict[str, Any] = {}

        async def recording_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] = answer.get("body", b"") + message.get("body", b"")
            await send(message)

        await self.app(scope, recording_receive, recording_send)
        self._log_answer(scope, answer.get("status", 500), answer.get("body", b""), notes)

    def _log_answer(self, scope: Any, status: int, body: bytes, notes: dict[str, str]) -> None:
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        word = data.get("status") or data.get("error") or ""
        delivery = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-gptimg-delivery"), "-"
        )
        if self.as_json:
            line = {"type": "answer", "status": status, "answer": word, "delivery_id": delivery}
            click.echo(json.dumps(line))
            return
        colour = "green" if status < 300 else "yellow" if status == 409 else "red"
        why = data.get("message") if status >= 400 and "forward" not in notes else None
        reason = notes.get("forward") or why
        console.print(
            f"{scope['method']} {scope['path']} [{colour}]{status} {word}[/{colour}] "
            f"(delivery {delivery})" + (f": {escape(reason)}" if reason else ""),
        )

    async def handle(self, event: Event, delivery: Delivery) -> None:
        """Print the verified event; relay it when asked (a failed relay fails the delivery)."""
        data = getattr(event, "data", None)
        if self.as_json:
            click.echo(
                json.dumps(
                    {
                        "type": "event",
                        "event": event.event,
                        "delivery_id": delivery.id,
                        "attempt": delivery.attempt,
                        "payload": event.model_dump(mode="json", by_alias=True),
                    }
                )
            )
        else:
            console.rule(f"[bold]{event.event}[/bold]  delivery {delivery.id}")
            console.print(f"generation {getattr(data, 'generation_id', '-')}  ", end="")
            console.print(f"status {getattr(data, 'status', '-')}  attempt {delivery.attempt}")
            for output in getattr(data, "outputs", []) or []:
                console.print(f"  {output.width}x{output.height}  {output.png or output.webp}")
            error = getattr(data, "error", None)
            if error:
                console.print(f"  [red]error[/red] {error}")
        if self.forward_to:
            await self._forward()

    async def _forward(self) -> None:
        import httpx

        headers, chunks, notes = _request.get()
        relayed = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in headers
            if k.lower() not in _HOP_BY_HOP
        ]
        assert self.forward_to is not None
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.post(
                    self.forward_to, content=b"".join(chunks), headers=relayed
                )
        except httpx.HTTPError as exc:
            text = f"forward to {self.forward_to} failed: {type(exc).__name__}: {exc}"
            notes["forward"] = text
            if self.as_json:
                self._say(text, ok=False)
            raise RuntimeError(text) from None
        ok = 200 <= response.status_code < 300
        text = f"forwarded to {self.forward_to}: {response.status_code}"
        if ok or self.as_json:
            self._say(text, ok=ok)
        if not ok:
            notes["forward"] = text
            # Fail the delivery so the sender retries, as it would against the app itself.
            raise RuntimeError(f"{self.forward_to} answered {response.status_code}")

    def _say(self, text: str, ok: bool) -> None:
        if self.as_json:
            click.echo(json.dumps({"type": "forward", "ok": ok, "message": text}))
        else:
            colour = "green" if ok else "red"
            console.print(f"  [{colour}]{text}[/{colour}]")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4242, show_default=True, help="0 picks a free port.")
@click.option("--path", default="/hooks/gptimg", show_default=True, help="Webhook path.")
@click.option(
    "--forward-to",
    metavar="URL",
    help="Relay each verified delivery (raw body and headers unchanged) to your app.",
)
@click.option(
    "--store",
    "store_url",
    default="memory://",
    show_default=True,
    help="Ledger store URL (dedup of what this listener has seen).",
)
@secret_env_option()
@json_option
def listen(
    host: str,
    port: int,
    path: str,
    forward_to: str | None,
    store_url: str,
    secret_env: str,
    as_json: bool,
) -> None:
    """Receive deliveries locally: verify, print each event, relay with --forward-to.

    Point the sender (``gptimg-webhooks send``, or a tunnel from the provider) at the
    printed URL. A delivery is verified and deduplicated like in your app; with
    --forward-to it is relayed byte for byte, and your app's answer decides: a non-2xx
    makes the delivery fail here too, so the sender retries. With --json, one JSON
    object per line (``type``: ``event``, ``answer``, ``forward``).
    """
    # Each answer gets one line of its own below; the library's log would repeat every
    # rejection and add a chained traceback for each failed relay.
    one_line_logs(logging.CRITICAL)
    secrets = secrets_from_env(secret_env)
    hooks = Webhooks(secrets, store=store_url, path=path, include_shared=False)
    listener = Listener(hooks, forward_to, as_json)
    port = pick_port(host, port, fallback=False)
    if not as_json:
        console.print(f"listening on http://{host}:{port}{path}", end="")
        console.print(f" → forwarding to {forward_to}" if forward_to else "")
        console.print("Ctrl-C to stop")
    else:
        click.echo(json.dumps({"type": "listening", "url": f"http://{host}:{port}{path}"}))
    serve(listener, host, port)
