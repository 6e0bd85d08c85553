"""``demo``: run the gallery, show what the receiver does with real deliveries."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import httpx

from gptimg_webhooks._core.receiver import Webhooks
from gptimg_webhooks.cli._common import EXIT_FAILED, EXIT_OK, Unavailable, console
from gptimg_webhooks.cli._server import BackgroundServer, pick_port
from gptimg_webhooks.testing.client import WebhookClient
from gptimg_webhooks.testing.deliveries import random_secret
from gptimg_webhooks.testing.factories import EventFactory
from gptimg_webhooks.testing.gallery import Gallery
from gptimg_webhooks.testing.simulator import Clock, Simulator

__all__ = ["demo"]


@dataclass
class Step:
    what: str
    answer: str
    meaning: str
    ok: bool


def _script(url: str, secret: str) -> list[Step]:
    """Send the scripted deliveries; say what happened to each."""
    events = EventFactory()
    steps: list[Step] = []
    tag = events.generation_id("")[:6].lower()
    with WebhookClient(url, secret) as client:

        def step(what: str, result_ok: bool, answer: str, meaning: str) -> None:
            steps.append(Step(what, answer, meaning, result_ok))

        first = client.deliver(events.succeeded(generation_id=f"gen_demo_{tag}", n=2))
        step(
            "new generation.succeeded",
            first.processed,
            f"{first.status} {first.outcome}",
            "accepted: verified, recorded, handler ran once",
        )
        again = client.retry(first)
        step(
            "same delivery again (same id)",
            again.duplicate,
            f"{again.status} {again.outcome}",
            "duplicate deduplicated: handler not run again",
        )
        replay = client.replay(first)
        step(
            "same signed body, forged fresh id",
            replay.duplicate,
            f"{replay.status} {replay.outcome}",
            "forged-id replay caught: the ledger keys on the signed body",
        )
        bad = client.deliver(events.succeeded(), wrong_secret=True)
        step(
            "signed with the wrong secret",
            bad.unauthorized,
            f"{bad.status} {bad.error}",
            "bad signature rejected; nothing recorded",
        )
        failed = client.deliver(events.failed(generation_id=f"gen_blocked_{tag}"))
        step(
            "generation.failed",
            failed.processed,
            f"{failed.status} {failed.outcome}",
            "accepted: the gallery shows its error",
        )
    # The provider's schedule, 60x faster: the 30 s wait before the retry takes 0.5 s.
    with Simulator(url, secret, clock=Clock(60)) as simulator:
        report = simulator.deliver(events.succeeded(generation_id=f"gen_flaky_{tag}"))
    answers = " → ".join(f"{a.describe()} (t={a.at:.0f}s)" for a in report.attempts)
    step(
        "handler that fails on attempt 1",
        report.delivered and len(report.attempts) == 2 and report.attempts[0].status == 500,
        answers,
        "failing handler retried: 500, the provider retries 30 s later, 200",
    )
    return steps


def _through_the_provider(provider: object, api_base: str, key: str) -> Step:
    """Submit through the API client; the local provider's webhook fills the gallery."""
    from gptimg_webhooks.client import Client

    with Client(key, base_url=api_base) as api:
        submitted = api.generate("a lighthouse at dusk", n=2)
        provider.wait_idle(timeout=30)  # type: ignore[attr-defined]
        generation = api.get_generation(submitted.generation_id)
    delivered = [d.status for d in provider.deliveries]  # type: ignore[attr-defined]
    return Step(
        "Client.generate → local provider → signed webhook",
        f"{generation.status}, webhook answered {' '.join(map(str, delivered))}",
        "submitted through the API client: the provider's webhook put its 2 images in the gallery",
        generation.status == "succeeded" and delivered == [200],
    )


def _check_gallery(base: str, tag_rows: int) -> Step:
    rows = httpx.get(f"{base}/generations", timeout=5).json()
    ids = [r["generationId"] for r in rows]
    once = len(ids) == len(set(ids)) == tag_rows
    return Step(
        "GET /generations",
        f"{len(ids)} rows",
        "each generation recorded exactly once" if once else f"unexpected rows: {ids}",
        once,
    )


@click.command()
@click.option("--port", default=8000, show_default=True, help="Port (a free one if taken).")
@click.option(
    "--exit/--serve",
    "exit_after",
    default=False,
    help="Stop after the script instead of leaving the gallery up.",
)
@click.option("--no-serve", "no_serve", is_flag=True, hidden=True, help="Same as --exit.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the gallery and ledger here (default: a temporary directory, removed).",
)
def demo(port: int, exit_after: bool, no_serve: bool, data_dir: Path | None) -> None:
    """Start the gallery example, send it scripted deliveries, show what happened.

    Nothing to set up: a throwaway secret and a temporary SQLite ledger. The script
    shows a delivery accepted, a duplicate deduplicated, a forged-id replay caught, a
    bad signature rejected, a failing handler retried, and a generation submitted
    through the API client to the local provider, whose signed webhook brings its
    images to the gallery. Then the gallery stays up until Ctrl-C (unless --exit).

    Exit status: 0 every step behaved as expected, 1 otherwise, 4 no port or server.
    """
    try:
        from gptimg_webhooks.testing.demo_app import create_app
    except ImportError as exc:
        raise Unavailable(
            f"the demo needs Starlette: pip install 'gptimg-webhooks[cli]' ({exc})"
        ) from exc
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="gptimg-demo-"))
    cleanup: Callable[[], None] = (
        (lambda: None) if data_dir else (lambda: shutil.rmtree(workdir, ignore_errors=True))
    )
    # The script provokes a handler error and rejections on purpose: keep their logs
    # out of the demo's own account of them.
    logging.getLogger("gptimg_webhooks").propagate = False
    logging.getLogger("gptimg_webhooks").addHandler(logging.NullHandler())
    from gptimg_webhooks.testing.provider import LocalProvider

    secret = random_secret()
    port = pick_port("127.0.0.1", port, fallback=True)
    # The local provider, 60x faster: the gallery is its registered webhook endpoint.
    provider = LocalProvider(time_scale=60, queued_for=30, runs_for=60)
    key = provider.add_key()
    _, provider_secret = provider.register_webhook(f"http://127.0.0.1:{port}/hooks/gptimg")
    hooks = Webhooks(
        [secret, provider_secret],
        store=f"sqlite:///{workdir / 'ledger.sqlite3'}",
        include_shared=False,
    )
    app = create_app(hooks, Gallery(workdir))
    api_port = pick_port("127.0.0.1", port + 1, fallback=True)
    try:
        with (
            BackgroundServer(provider, "127.0.0.1", api_port) as api_server,
            BackgroundServer(app, "127.0.0.1", port) as server,
        ):
            console.print(f"gallery example running on {server.url} (data in {workdir})")
            console.print(f"local provider API on {api_server.url}/api/v1\n")
            steps = _script(server.url + hooks.path, secret)
            steps.append(_through_the_provider(provider, f"{api_server.url}/api/v1", key))
            steps.append(_check_gallery(server.url, tag_rows=4))
            for s in steps:
                mark = "[green]✓[/green]" if s.ok else "[red]✗[/red]"
                console.print(f"{mark} {s.meaning}\n    {s.what} → {s.answer}")
            all_ok = all(s.ok for s in steps)
            if exit_after or no_serve:
                sys.exit(EXIT_OK if all_ok else EXIT_FAILED)
            console.print(
                f"\nGallery: [bold]{server.url}/[/bold]  (JSON: {server.url}/generations)"
            )
            console.print("Send more with this session's secret:")
            console.print(
                f"  GPTIMG_WEBHOOK_SECRET={secret} gptimg-webhooks send {server.url}{hooks.path}"
            )
            console.print("Ctrl-C to stop.")
            server.wait()
    finally:
        hooks.close()
        cleanup()
