"""``manage.py gptimg_webhooks_sweep``: the lost-pointer sweep, as cron runs it.

The engine suite (tests/dispatch/) runs it as a real process against django-tasks' worker;
here, its options and errors, on the settings' ORM ledger.
"""

from __future__ import annotations

import hashlib
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from gptimg_webhooks import Webhooks
from gptimg_webhooks.dispatch import PointerDispatcher
from gptimg_webhooks.stores import Entry
from tests.django.conftest import SECRET, delivery

pytestmark = pytest.mark.django_db(transaction=True)


class Pointers(PointerDispatcher):
    """Keep the pointers, as a broker would."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def dispatch(self, key: str, *, delay: float = 0.0) -> None:
        self.sent.append(key)


pointers = Pointers()
hooks = Webhooks(
    SECRET, store="django://", mode="deferred", dispatcher=pointers, include_shared=False
)


def lost_record() -> str:
    """Record a pending delivery whose pointer never reached the queue; return its key."""
    body, headers = delivery()
    key = hashlib.sha256(body).hexdigest()
    entry = Entry(key, headers["X-Gptimg-Delivery"], "generation.succeeded", None, body)
    assert hooks.store.enqueue(entry).queued
    return key


def test_the_command_re_dispatches_a_lost_pointer_once_it_is_past_the_grace() -> None:
    key = lost_record()
    out = StringIO()
    call_command("gptimg_webhooks_sweep", "--hooks", f"{__name__}:hooks", stdout=out)
    assert pointers.sent == []  # younger than the receiver's grace: its pointer may be coming
    assert "Re-dispatched 0 record(s)." in out.getvalue()
    call_command(
        "gptimg_webhooks_sweep", "--hooks", f"{__name__}:hooks", "--grace", "0s", stdout=out
    )
    assert pointers.sent == [key]
    assert out.getvalue().splitlines()[-2:] == [key, "Re-dispatched 1 record(s)."]


def test_the_settings_receiver_without_a_dispatcher_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="dispatcher"):
        call_command("gptimg_webhooks_sweep", stdout=StringIO())


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--grace", "soon"], "--grace"), (["--hooks", "no.such.module:hooks"], "no.such")],
)
def test_bad_options_are_command_errors(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("gptimg_webhooks_sweep", *args, stdout=StringIO())
