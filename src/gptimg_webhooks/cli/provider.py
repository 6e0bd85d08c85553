"""``provider``: a local gptimage2.plus (API and webhooks) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import click

from gptimg_webhooks.cli._common import EXIT_UNAVAILABLE, Unavailable, console
from gptimg_webhooks.cli._server import pick_port

__all__ = ["provider"]

API_KEY_ENV = "GPTIMG_API_KEY"


def _server(app: Any, host: str, port: int) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal once it has stopped, which would turn a clean
            # Ctrl-C or SIGTERM into "Aborted!" or a kill; stopping is the point here.
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    return Server(config)


@click.command()
@click.option("--port", default=8787, show_default=True, help="0 picks a free port.")
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Run the provider's waits (generation times, webhook retries, the rate-limit "
    "window) this many times faster; the 5 s delivery timeout stays real.",
)
@click.option(
    "--credits", default=1000.0, show_default=True, help="Credits of the API key (Pro plan)."
)
def provider(port: int, time_scale: float, credits: float) -> None:
    """Serve a local gptimage2.plus on 127.0.0.1: the REST API and outbound webhooks.

    The API key is $GPTIMG_API_KEY when set (gimg_...), else a fresh one, printed.
    Register webhooks with POST /api/account/webhooks and any session cookie. Prompt
    markers choose the outcome: [fail], [block], [slow], [policy] (422).
    Ctrl-C or SIGTERM stops it.
    """
    try:
        from gptimg_webhooks.testing.provider import LocalProvider
    except ImportError as exc:
        raise Unavailable(
            f"the provider needs Starlette: pip install 'gptimg-webhooks[cli]' ({exc})"
        ) from exc
    local = LocalProvider(time_scale=time_scale)
    try:
        key = local.add_key(os.environ.get(API_KEY_ENV) or None, credits=credits)
    except ValueError as exc:
        raise click.UsageError(f"{API_KEY_ENV}: {exc}") from None
    host = "127.0.0.1"
    port = pick_port(host, port, fallback=False)
    server = _server(local, host, port)
    base = f"http://{host}:{port}"
    console.print(f"local provider running on {base}")
    console.print(f"  API base URL: {base}/api/v1")
    console.print(f"  API key: {key} (pro, {credits:g} credits)")
    console.print(
        f"  webhooks: curl -X POST {base}/api/account/webhooks -H 'Cookie: session=local' "
        "-H 'Content-Type: application/json' "
        """-d '{"url": "http://127.0.0.1:8000/hooks/gptimg", """
        """"events": ["generation.succeeded", "generation.failed"], "label": "dev"}'"""
    )
    if time_scale != 1:
        console.print(f"  time runs {time_scale:g}x faster")
    console.print("Ctrl-C to stop.")
    server.run()
    if not server.started:
        raise click.exceptions.Exit(EXIT_UNAVAILABLE)
    console.print("stopped")
