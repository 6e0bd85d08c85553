"""``gptimg-webhooks worker``: process deferred deliveries from a shared store."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from typing import Any

import click

from gptimg_webhooks._core.errors import StoreUnavailable, WebhookError
from gptimg_webhooks._core.receiver import Webhooks

__all__ = ["load_receiver", "worker"]


def load_receiver(ref: str) -> Webhooks:
    """Import ``module:attribute`` and return the :class:`Webhooks` it names.

    The attribute may also be an adapter that holds one (``.receiver``), or a function
    that returns one.
    """
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected module:attribute, got {ref!r}", param_hint="--app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: the app lives beside you
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {ref!r}: {exc}", param_hint="--app") from exc
    if not isinstance(target, Webhooks) and callable(target) and not hasattr(target, "receiver"):
        target = target()
    target = getattr(target, "receiver", target)
    if not isinstance(target, Webhooks):
        raise click.BadParameter(
            f"{ref!r} is a {type(target).__name__}, not a gptimg_webhooks.Webhooks receiver",
            param_hint="--app",
        )
    return target


@click.command()
@click.option(
    "--app",
    "app_ref",
    required=True,
    metavar="MODULE:ATTR",
    help="The Webhooks receiver whose handlers run, e.g. myapp.hooks:hooks.",
)
@click.option(
    "--store",
    "store_url",
    envvar="GPTIMG_WEBHOOK_STORE",
    metavar="URL",
    help="Ledger URL; default: $GPTIMG_WEBHOOK_STORE, else the receiver's own store.",
)
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds one run may take before another worker may take it over "
    "[default: the receiver's lease].",
)
@click.option(
    "--max-attempts",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Runs of a failing record (the first included) before it is kept as dead.",
)
@click.option(
    "--retry-delay",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds before the first retry of a failed run; each next wait is 4x longer "
    "(at most 1 h).",
)
@click.option(
    "--poll-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds an idle worker waits before it looks for due records again.",
)
@click.option("--once", is_flag=True, help="Process what is due now, then exit.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def worker(
    *,
    app_ref: str,
    store_url: str | None,
    concurrency: int,
    lease: float | None,
    max_attempts: int,
    retry_delay: float,
    poll_interval: float,
    once: bool,
    log_level: str,
) -> None:
    """Run the handlers of deliveries a deferred-mode receiver recorded.

    Start one or many, on any host that reaches the store. SIGTERM or SIGINT stops
    leasing and lets the runs under way finish; a second signal exits at once (the
    leases then expire and another worker takes the records over).
    """
    from gptimg_webhooks.stores import open_store
    from gptimg_webhooks.worker import Backoff, Worker

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    receiver = load_receiver(app_ref)
    try:
        if store_url:
            receiver.store = open_store(store_url)
        runner = Worker(
            receiver,
            concurrency=concurrency,
            lease=lease,
            backoff=Backoff(max_attempts, initial=retry_delay),
            poll_interval=poll_interval,
        )
    except WebhookError as exc:
        raise click.ClickException(str(exc)) from exc

    async def main() -> int:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            click.echo(f"{signal.Signals(signum).name}: finishing the runs under way", err=True)
            runner.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)  # a second signal ends the process

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        return await runner.run(once=once)

    click.echo(f"worker {os.getpid()}: {runner!r}", err=True)
    try:
        runs = asyncio.run(main())
    except StoreUnavailable as exc:
        raise click.ClickException(f"ledger unavailable: {exc}") from exc
    finally:
        receiver.close()
    click.echo(f"worker {os.getpid()}: stopped after {runs} run(s)", err=True)
