"""The ledger's admin and management commands: list, filter, replay, resolve, prune."""

from __future__ import annotations

import time
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from gptimg_webhooks import Delivery, GenerationSucceeded, Webhooks
from gptimg_webhooks.django.models import Delivery as Record
from tests.django.conftest import SECRET, delivery

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/gptimg_webhooks/delivery/"


def fail_once(hooks: Webhooks) -> list[int]:
    """A handler that fails on attempt 1; return the attempts it saw."""
    attempts: list[int] = []

    @hooks.on("generation.succeeded")
    def handler(event: GenerationSucceeded, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            raise RuntimeError(f"first attempt of {event.data.generation_id} fails")

    return attempts


def failed_delivery(generation_id: str) -> Record:
    body, headers = delivery(generation_id)
    Client().post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    record = Record.objects.get(generation_id=generation_id)
    assert record.state == "failed"
    return record


@pytest.fixture
def admin_client() -> Client:
    User.objects.create_superuser("admin", "admin@example.invalid", "pw")
    client = Client()
    client.login(username="admin", password="pw")
    return client


def test_changelist_shows_the_columns_and_filters_and_never_the_secret(
    hooks: Webhooks, admin_client: Client
) -> None:
    fail_once(hooks)
    record = failed_delivery("gen_admin_1")
    page = admin_client.get(CHANGELIST).content.decode()
    for text in ("gen_admin_1", "failed", "generation.succeeded", "first attempt of gen_admin_1"):
        assert text in page
    for column in (
        "state",
        "event",
        "generation id",
        "attempts",
        "last error",
        "created",
        "updated",
    ):
        assert f">{column[0].upper()}{column[1:]}<" in page  # a column header
    assert "By state" in page and "By event" in page
    detail = admin_client.get(f"{CHANGELIST}{record.key}/change/").content.decode()
    assert "gen_admin_1" in detail
    for text in (page, detail):
        assert SECRET not in text
        assert SECRET.removeprefix("whsec_") not in text


def test_changelist_filters_by_state(hooks: Webhooks, admin_client: Client) -> None:
    fail_once(hooks)
    failed_delivery("gen_filter_failed")
    body, headers = delivery("gen_filter_done")
    Client().post("/hooks/gptimg", body, content_type="application/json", headers=headers)  # 500
    Client().post("/hooks/gptimg", body, content_type="application/json", headers=headers)  # done
    page = admin_client.get(CHANGELIST + "?state=done").content.decode()
    assert "gen_filter_done" in page
    assert "gen_filter_failed" not in page


def test_admin_replay_action_runs_the_handlers_again(hooks: Webhooks, admin_client: Client) -> None:
    attempts = fail_once(hooks)
    record = failed_delivery("gen_admin_replay")
    response = admin_client.post(
        CHANGELIST, {"action": "replay_failed", "_selected_action": [record.key]}, follow=True
    )
    assert "1 now done" in response.content.decode()
    assert attempts == [1, 2]
    record.refresh_from_db()
    assert (record.state, record.attempts, record.body) == ("done", 2, None)


def test_admin_mark_resolved_closes_without_running_handlers(
    hooks: Webhooks, admin_client: Client
) -> None:
    attempts = fail_once(hooks)
    record = failed_delivery("gen_admin_resolve")
    admin_client.post(CHANGELIST, {"action": "mark_resolved", "_selected_action": [record.key]})
    record.refresh_from_db()
    assert record.state == "done"
    assert attempts == [1]
    body, headers = delivery("gen_admin_resolve")
    again = Client().post("/hooks/gptimg", body, content_type="application/json", headers=headers)
    assert again.json()["status"] == "duplicate"


def test_replay_command_replays_every_failed_record(hooks: Webhooks) -> None:
    attempts = fail_once(hooks)
    first = failed_delivery("gen_cmd_1")
    second = failed_delivery("gen_cmd_2")
    out = StringIO()
    call_command("gptimg_webhooks_replay", "--all", stdout=out)
    assert "Replayed 2 record(s), 2 now done." in out.getvalue()
    assert attempts == [1, 1, 2, 2]
    assert {r.state for r in Record.objects.filter(key__in=[first.key, second.key])} == {"done"}


def test_replay_command_leaves_a_record_that_fails_again_dead(hooks: Webhooks) -> None:
    @hooks.on("generation.succeeded")
    def always(event: Any) -> None:
        raise RuntimeError("still broken")

    record = failed_delivery("gen_cmd_dead")
    with pytest.raises(CommandError, match="did not replay"):
        call_command("gptimg_webhooks_replay", record.key, stdout=StringIO())
    record.refresh_from_db()
    assert (record.state, record.attempts) == ("dead", 2)
    assert record.error is not None
    assert "still broken" in record.error


def test_replay_command_needs_keys_or_all() -> None:
    with pytest.raises(CommandError, match="--all"):
        call_command("gptimg_webhooks_replay")


def test_prune_command_deletes_only_old_done_records(hooks: Webhooks) -> None:
    old = time.time() - 40 * 86400
    for key, state in [("a" * 64, "done"), ("b" * 64, "failed"), ("c" * 64, "processing")]:
        Record.objects.create(key=key, state=state, delivery_id="d", created_at=old, updated_at=old)
    Record.objects.create(
        key="d" * 64, state="done", delivery_id="d", created_at=time.time(), updated_at=time.time()
    )
    out = StringIO()
    call_command("gptimg_webhooks_prune", stdout=out)  # default: 30 days of retention
    assert "Pruned 1 ledger record(s)" in out.getvalue()
    # The failed record is kept for replay: failed records go only when asked by name.
    assert sorted(Record.objects.values_list("key", flat=True)) == ["b" * 64, "c" * 64, "d" * 64]
    call_command("gptimg_webhooks_prune", "--older-than", "0", stdout=out)
    assert sorted(Record.objects.values_list("key", flat=True)) == ["b" * 64, "c" * 64]
