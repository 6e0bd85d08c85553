"""``gptimg-webhooks reconcile``: poll the provider now for every watched generation."""

from __future__ import annotations

import sys

import click

from gptimg_webhooks._core.errors import WebhookError
from gptimg_webhooks.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    console,
    exit_for,
    json_option,
    load_receiver,
    print_json,
)

__all__ = ["reconcile"]

#: Outcomes after which nothing is left to do for a generation.
_SETTLED = ("processed", "ignored", "duplicate")


@click.command()
@click.option(
    "--app",
    "app_ref",
    required=True,
    metavar="MODULE:ATTR",
    help="The Webhooks receiver (built with reconcile=Reconciliation(...)).",
)
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1))
@json_option
def reconcile(app_ref: str, limit: int, as_json: bool) -> None:
    """Poll the provider now for watched generations no webhook has settled; run them.

    Use it after an outage, a bad deploy or a disabled endpoint: every generation the
    app submitted and still has pending is polled at once (not at its time), and each
    terminal outcome runs the handlers, once, through the ledger.

    Exit status: 0 every polled generation settled or still running, 1 a handler
    failed, 2 the receiver has no reconciliation, 4 the app or store is unavailable.
    """
    hooks = load_receiver(app_ref)
    try:
        if hooks.reconcile is None:
            raise click.UsageError(f"{app_ref} has no reconcile=Reconciliation(...)")
        try:
            outcomes = hooks.reconcile_now(limit=limit)
        except WebhookError as exc:
            raise exit_for(exc) from exc
    finally:
        hooks.close()
    failed = [k for k, v in outcomes.items() if v in ("handler_failed", "dead")]
    if as_json:
        print_json([{"key": k, "outcome": v} for k, v in outcomes.items()])
    else:
        for key, outcome in outcomes.items():
            colour = "green" if outcome in _SETTLED else "yellow"
            console.print(f"{key[:40]} [{colour}]{outcome}[/{colour}]")
        console.print(f"{len(outcomes)} record(s) run, {len(failed)} failed")
    sys.exit(EXIT_FAILED if failed else EXIT_OK)
