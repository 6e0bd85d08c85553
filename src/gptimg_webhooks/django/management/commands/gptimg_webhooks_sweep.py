"""``manage.py gptimg_webhooks_sweep``: dispatch again the records whose task was lost.

For task queues without a scheduler of their own (Django's task framework): run it from
cron, a Kubernetes CronJob or any periodic runner. The receiver's keeper sweeps too, in
every process that serves the receiver.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gptimg_webhooks._core.durations import DURATION_HELP, parse_duration
from gptimg_webhooks._core.errors import ConfigurationError, WebhookError
from gptimg_webhooks.dispatch import load_hooks, sweep
from gptimg_webhooks.django.conf import receiver


class Command(BaseCommand):
    help = (
        "Dispatch again the deferred deliveries whose task was lost: records pending for "
        "longer than the grace period (a pointer lost between the ledger and the task "
        "queue) and records whose task died holding its lease. Dispatching twice is "
        "harmless: the ledger runs each record once."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--hooks",
            metavar="MODULE:ATTR",
            help="the receiver to sweep (default: the one GPTIMG_WEBHOOKS configures)",
        )
        parser.add_argument("--limit", type=int, default=100, help="at most this many records")
        parser.add_argument(
            "--grace",
            metavar="AGE",
            help=f"pending for at least this long (default the receiver's): {DURATION_HELP}",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            grace = None if options["grace"] is None else parse_duration(options["grace"])
        except ConfigurationError as exc:
            raise CommandError(f"--grace: {exc}") from exc
        target = options["hooks"]
        try:
            hooks = load_hooks(target) if target else receiver()
        except (ImportError, AttributeError, TypeError) as exc:
            raise CommandError(f"--hooks {target!r}: {exc}") from exc
        except WebhookError as exc:
            raise CommandError(str(exc)) from exc
        try:
            keys = sweep(hooks, limit=options["limit"], grace=grace)
        except WebhookError as exc:
            raise CommandError(str(exc)) from exc
        for key in keys:
            self.stdout.write(key)
        self.stdout.write(f"Re-dispatched {len(keys)} record(s).")
