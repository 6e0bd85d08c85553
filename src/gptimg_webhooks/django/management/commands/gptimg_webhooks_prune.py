"""``manage.py gptimg_webhooks_prune``: delete finished ledger records past retention."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gptimg_webhooks._core.errors import WebhookError
from gptimg_webhooks._core.ledger import FINISHED
from gptimg_webhooks.django.conf import receiver


class Command(BaseCommand):
    help = (
        "Delete done, failed and dead ledger records not touched for the retention period "
        "(GPTIMG_WEBHOOKS['RETENTION'], default 30 days) or --older-than DAYS. In-progress "
        "and pending records are never pruned. The receiver also prunes once an hour."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--older-than", type=float, metavar="DAYS", help="age in days")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            hooks = receiver()
            days = options["older_than"]
            age = hooks.retention if days is None else days * 86400.0
            if age < 0:
                raise CommandError("--older-than must not be negative")
            count = hooks.store.prune(age, FINISHED)
        except WebhookError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Pruned {count} ledger record(s) older than {age / 86400:g} days.")
