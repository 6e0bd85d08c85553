"""Several accounts in Django: settings or the admin's *Webhook accounts*, secrets write-only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from gptimg_webhooks import Webhooks
from gptimg_webhooks.django import conf
from gptimg_webhooks.django.models import WebhookAccount
from tests.django.conftest import signed
from tests.support.contract import payload

pytestmark = pytest.mark.django_db(transaction=True)

ACME_SECRET = "whsec_acme_django_0123456789"
GLOBEX_SECRET = "whsec_globex_django_0123456789"


def post(path: str, secret: str, generation_id: str) -> int:
    body = payload(generation_id)
    response = Client().post(
        path, body, content_type="application/json", headers=signed(body, secret=secret)
    )
    return response.status_code


@pytest.fixture
def accounts_from_settings(settings: object) -> Webhooks:
    base = dict(settings.GPTIMG_WEBHOOKS)  # type: ignore[attr-defined]
    base.pop("SECRET", None)
    base["ACCOUNTS"] = [
        {"NAME": "acme", "SECRETS": [ACME_SECRET]},
        {"NAME": "globex", "SECRET": GLOBEX_SECRET, "API_KEY": "gimg_globex"},
    ]
    settings.GPTIMG_WEBHOOKS = base  # type: ignore[attr-defined]
    conf.reset()
    return conf.receiver()


def test_accounts_from_settings_each_at_its_path_with_its_secret(
    accounts_from_settings: Webhooks,
) -> None:
    seen: list[str | None] = []
    accounts_from_settings.on("generation.succeeded")(lambda e, d: seen.append(d.account))
    assert post("/hooks/gptimg/acme", ACME_SECRET, "gen_dj_a") == 200
    assert post("/hooks/gptimg/globex", GLOBEX_SECRET, "gen_dj_g") == 200
    assert post("/hooks/gptimg/globex", ACME_SECRET, "gen_dj_x") == 401  # the other's secret
    assert post("/hooks/gptimg/initech", ACME_SECRET, "gen_dj_i") == 404
    assert seen == ["acme", "globex"]
    assert accounts_from_settings.accounts is not None
    assert accounts_from_settings.accounts.api_key("globex") == "gimg_globex"


@pytest.fixture
def accounts_in_database(settings: object) -> Webhooks:
    base = dict(settings.GPTIMG_WEBHOOKS)  # type: ignore[attr-defined]
    base.pop("SECRET", None)
    base["ACCOUNTS"] = "database"
    settings.GPTIMG_WEBHOOKS = base  # type: ignore[attr-defined]
    conf.reset()
    return conf.receiver()


def test_accounts_kept_in_the_database_are_served(accounts_in_database: Webhooks) -> None:
    accounts_in_database.on("generation.succeeded")(lambda e: None)
    WebhookAccount.objects.create(name="acme", secrets=ACME_SECRET)
    WebhookAccount.objects.create(name="gone", secrets=GLOBEX_SECRET, enabled=False)
    assert post("/hooks/gptimg/acme", ACME_SECRET, "gen_db_a") == 200
    assert post("/hooks/gptimg/gone", GLOBEX_SECRET, "gen_db_g") == 404  # disabled


def test_the_admin_never_shows_a_saved_secret_and_blank_keeps_it(
    accounts_in_database: Webhooks,
) -> None:
    User.objects.create_superuser("admin", "a@example.com", "pw")
    client = Client()
    client.login(username="admin", password="pw")
    created = client.post(
        "/admin/gptimg_webhooks/webhookaccount/add/",
        {"name": "acme", "secrets": ACME_SECRET, "api_key": "gimg_acme_key", "enabled": "on"},
    )
    assert created.status_code == 302, created.content[:500]
    page = client.get("/admin/gptimg_webhooks/webhookaccount/acme/change/").content.decode()
    assert ACME_SECRET not in page
    assert "gimg_acme_key" not in page
    listing = client.get("/admin/gptimg_webhooks/webhookaccount/").content.decode()
    assert ACME_SECRET not in listing
    # Saving with the secret fields left blank keeps what was stored.
    client.post(
        "/admin/gptimg_webhooks/webhookaccount/acme/change/",
        {"secrets": "", "api_key": "", "enabled": "on"},
    )
    row = WebhookAccount.objects.get(name="acme")
    assert (row.secrets, row.api_key) == (ACME_SECRET, "gimg_acme_key")
    refused = client.post(
        "/admin/gptimg_webhooks/webhookaccount/add/",
        {"name": "bad", "secrets": '"whsec_quoted"', "enabled": "on"},
    )
    assert refused.status_code == 200  # the form again, with the error
    assert not WebhookAccount.objects.filter(name="bad").exists()
