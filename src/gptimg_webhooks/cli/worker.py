"""``gptimg-webhooks worker``: process deferred deliveries from a shared store."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import click

from gptimg_webhooks._core.errors import StoreUnavailable, WebhookError
from gptimg_webhooks.cli._common import Unavailable, exit_for, load_receiver, open_writable

__all__ = ["worker"]


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
    from gptimg_webhooks.worker import Backoff, Worker

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    receiver = load_receiver(app_ref)
    try:
        if store_url:
            receiver.store = open_writable(store_url)
        runner = Worker(
            receiver,
            concurrency=concurrency,
            lease=lease,
            backoff=Backoff(max_attempts, initial=retry_delay),
            poll_interval=poll_interval,
        )
    except WebhookError as exc:
        receiver.close()
        raise exit_for(exc) from exc

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
        raise Unavailable(f"ledger store unavailable: {exc}") from exc
    except NotImplementedError as exc:  # a store without workers (lease_pending)
        raise Unavailable(str(exc)) from exc
    finally:
        receiver.close()
    click.echo(f"worker {os.getpid()}: stopped after {runs} run(s)", err=True)
