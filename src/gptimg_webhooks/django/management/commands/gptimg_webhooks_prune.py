"""``manage.py gptimg_webhooks_prune``: delete finished ledger records past retention."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gptimg_webhooks._core.durations import DURATION_HELP, parse_duration
from gptimg_webhooks._core.errors import ConfigurationError, WebhookError
from gptimg_webhooks.django.conf import receiver


class Command(BaseCommand):
    help = (
        "Delete done, failed and dead ledger records not touched for the retention period "
        "(GPTIMG_WEBHOOKS['RETENTION'], default 30 days) or --older-than AGE. In-progress "
        "and pending records are never pruned. The receiver also prunes once an hour."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--older-than",
            metavar="AGE",
            help=f"age, as the gptimg-webhooks command takes it: {DURATION_HELP}",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            hooks = receiver()
            given = options["older_than"]
            try:
                age = hooks.retention if given is None else parse_duration(given)
            except ConfigurationError as exc:
                raise CommandError(f"--older-than: {exc}") from exc
            count = hooks.store.prune(age)
        except WebhookError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Pruned {count} ledger record(s) older than {age / 86400:g} days.")
