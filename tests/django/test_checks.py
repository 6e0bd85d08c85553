"""System checks and migrations: ``manage.py check`` names the broken setting."""

from __future__ import annotations

import time
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from gptimg_webhooks.django.checks import check_settings


def errors(settings: Any, value: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delenv("GPTIMG_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("GPTIMG_WEBHOOK_STORE", raising=False)
    settings.GPTIMG_WEBHOOKS = value
    return [f"{e.id}: {e.msg}" for e in check_settings()]


def test_valid_settings_pass_manage_py_check() -> None:
    out = StringIO()
    call_command("check", stdout=out)
    assert "no issues" in out.getvalue()


@pytest.mark.parametrize("secret", ["", "   "])
def test_blank_secret_fails_manage_py_check_naming_the_setting(settings: Any, secret: str) -> None:
    settings.GPTIMG_WEBHOOKS = {"SECRET": secret}
    with pytest.raises(
        SystemCheckError, match=r'gptimg_webhooks.E001.*GPTIMG_WEBHOOKS\["SECRET"\]'
    ):
        call_command("check")


def test_missing_secret_names_the_setting_and_the_environment_variable(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = errors(settings, {}, monkeypatch)
    assert found == [
        'gptimg_webhooks.E001: GPTIMG_WEBHOOKS["SECRET"] is missing and '
        "GPTIMG_WEBHOOK_SECRET is not set."
    ]


def test_missing_secret_is_fine_when_the_environment_has_it(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTIMG_WEBHOOK_SECRET", "whsec_from_env")
    settings.GPTIMG_WEBHOOKS = {}
    assert check_settings() == []


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        ("nosuch://x", "unknown store URL scheme"),
        ("django://nowhere", "no database 'nowhere'"),
    ],
)
def test_unusable_store_fails_the_check_naming_the_setting(
    settings: Any, monkeypatch: pytest.MonkeyPatch, store: str, reason: str
) -> None:
    (found,) = errors(settings, {"SECRET": "whsec_x", "STORE": store}, monkeypatch)
    assert found.startswith('gptimg_webhooks.E002: GPTIMG_WEBHOOKS["STORE"]')
    assert reason in found


def test_invalid_option_and_unknown_key_are_reported(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bad_size,) = errors(settings, {"SECRET": "whsec_x", "MAX_BODY_SIZE": 0}, monkeypatch)
    assert bad_size.startswith('gptimg_webhooks.E003: GPTIMG_WEBHOOKS["MAX_BODY_SIZE"]')
    (typo,) = errors(settings, {"SECRET": "whsec_x", "SECRETS": "x"}, monkeypatch)
    assert "unknown key(s) ['SECRETS']" in typo


@pytest.mark.django_db
def test_committed_migrations_match_the_models() -> None:
    out = StringIO()
    # Exits non-zero when a model change has no migration.
    call_command("makemigrations", "gptimg_webhooks", check=True, dry_run=True, stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.parametrize(
    ("secret", "said"),
    [("plain", "does not start with 'whsec_'"), ('"whsec_abc"', "quotes around it")],
)
def test_a_secret_that_could_never_verify_fails_manage_py_check(
    settings: Any, secret: str, said: str
) -> None:
    settings.GPTIMG_WEBHOOKS = {"SECRET": secret}
    with pytest.raises(SystemCheckError, match=r"gptimg_webhooks\.E001") as caught:
        call_command("check")
    assert said in str(caught.value)


def test_an_unreachable_store_fails_the_check_within_seconds(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.servers import free_port

    closed = f"redis://127.0.0.1:{free_port()}/0"
    began = time.monotonic()
    (found,) = errors(settings, {"SECRET": "whsec_x", "STORE": closed}, monkeypatch)
    assert time.monotonic() - began < 5
    assert found.startswith('gptimg_webhooks.E002: GPTIMG_WEBHOOKS["STORE"]')
    assert "cannot be reached" in found


def test_a_reachable_sqlite_store_passes_the_check(
    settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert errors(settings, {"SECRET": "whsec_x", "STORE": store}, monkeypatch) == []
