"""``manage.py gptimg_webhooks_replay``: run the handlers of failed deliveries again."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gptimg_webhooks._core.errors import WebhookError
from gptimg_webhooks._core.ledger import State
from gptimg_webhooks.django.conf import receiver
from gptimg_webhooks.django.replay import replay


class Command(BaseCommand):
    help = (
        "Replay failed (and dead) deliveries locally: with the ORM ledger their handlers "
        "run again now, in this process; a record that fails again is left dead with its "
        "new error. With other stores the records go back to pending for a worker."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("keys", nargs="*", metavar="KEY", help="ledger keys to replay")
        parser.add_argument("--all", action="store_true", help="every failed and dead record")
        parser.add_argument("--limit", type=int, default=1000, help="at most this many")
        parser.add_argument("--dry-run", action="store_true", help="list, do not replay")

    def handle(self, *args: Any, **options: Any) -> None:
        keys: list[str] = list(options["keys"])
        if not keys and not options["all"]:
            raise CommandError("name ledger keys to replay, or pass --all")
        try:
            store = receiver().store
            if options["all"]:
                limit = options["limit"]
                found = [*store.records(State.FAILED, limit), *store.records(State.DEAD, limit)]
                keys += [r.key for r in found[:limit]]
            if options["dry_run"]:
                for key in keys:
                    self.stdout.write(key)
                return
            outcomes = replay(keys)
        except WebhookError as exc:
            raise CommandError(str(exc)) from exc
        for key, outcome in outcomes.items():
            self.stdout.write(f"{key}  {outcome}")
        done = sum(1 for s in outcomes.values() if s in ("processed", "ignored"))
        self.stdout.write(f"Replayed {len(outcomes)} record(s), {done} now done.")
        if done < len(outcomes) and not all(s == "queued" for s in outcomes.values()):
            raise CommandError("some records did not replay; see above")
