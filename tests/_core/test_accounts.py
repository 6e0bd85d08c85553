"""Several accounts in one app: own path, own secrets, own guard, own ledger space."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware

from gptimg_webhooks import Account, ConfigurationError, Delivery, Event, Webhooks, sign
from gptimg_webhooks.asgi import WebhookMiddleware
from gptimg_webhooks.stores.memory import MemoryStore
from tests.support.contract import headers, payload

ACME = Account("acme", ["whsec_acme_new", "whsec_acme_old"], api_key="gimg_acme")
GLOBEX = Account("globex", "whsec_globex")


def two_accounts(**options: Any) -> Webhooks:
    return Webhooks(store=MemoryStore(), accounts=[ACME, GLOBEX], include_shared=False, **options)


def post(hooks: Webhooks, path: str, body: bytes, secret: str) -> tuple[int, str]:
    answer = hooks.handle("POST", headers(body, secret), body, path=path)
    data = answer.json
    return answer.status, data.get("status") or data.get("error")


def test_each_account_is_served_at_its_own_path_with_its_own_secrets() -> None:
    hooks = two_accounts()
    seen: list[tuple[str | None, str]] = []
    hooks.on("generation.succeeded")(lambda e, d: seen.append((d.account, e.data.generation_id)))
    assert post(hooks, "/hooks/gptimg/acme", payload("gen_a"), "whsec_acme_new")[0] == 200
    assert post(hooks, "/hooks/gptimg/acme", payload("gen_a_old"), "whsec_acme_old")[0] == 200
    assert post(hooks, "/hooks/gptimg/globex", payload("gen_g"), "whsec_globex")[0] == 200
    assert seen == [("acme", "gen_a"), ("acme", "gen_a_old"), ("globex", "gen_g")]
    keys = sorted(r.key.split(":")[0] for r in hooks.store.records())
    assert keys == ["acme", "acme", "globex"]  # each account's own ledger space
    hooks.close()


def test_a_delivery_signed_for_one_account_is_refused_at_the_others_path() -> None:
    hooks = two_accounts()
    ran: list[Event] = []
    hooks.on("generation.succeeded")(ran.append)
    body = payload("gen_cross")
    assert post(hooks, "/hooks/gptimg/globex", body, "whsec_acme_new") == (
        401,
        "invalid_signature",
    )
    assert ran == []
    assert hooks.store.records() == []
    hooks.close()


def test_unknown_account_and_the_bare_base_path_are_404() -> None:
    hooks = two_accounts()
    body = payload("gen_nobody")
    assert post(hooks, "/hooks/gptimg/initech", body, "whsec_acme_new") == (
        404,
        "unknown_endpoint",
    )
    assert post(hooks, "/hooks/gptimg", body, "whsec_acme_new")[0] == 404
    hooks.close()


def test_one_accounts_failures_do_not_count_against_the_other() -> None:
    hooks = two_accounts(failure_threshold=2)

    @hooks.on("generation.succeeded")
    def handler(event: Event, delivery: Delivery) -> None:
        if delivery.account == "acme":
            raise RuntimeError("acme's downstream is down")

    answers = [
        post(hooks, "/hooks/gptimg/acme", payload(f"gen_f{i}"), "whsec_acme_new") for i in range(3)
    ]
    assert [a[0] for a in answers] == [500, 500, 200]  # acme's guard trips at its 3rd
    assert post(hooks, "/hooks/gptimg/globex", payload("gen_ok"), "whsec_globex") == (
        200,
        "processed",
    )
    # globex's count is its own: acme's streak neither tripped nor reset it.
    assert not hooks.store.bump("guard:account:globex", hooks.guard_limit)
    hooks.close()


def test_a_resolver_supplies_accounts_by_name() -> None:
    looked_up: list[str] = []

    def resolve(name: str) -> Account | None:
        looked_up.append(name)
        return Account(name, f"whsec_{name}_key") if name.startswith("tenant") else None

    hooks = Webhooks(store=MemoryStore(), accounts=resolve, include_shared=False)
    assert post(hooks, "/hooks/gptimg/tenant1", payload("gen_t"), "whsec_tenant1_key")[0] == 200
    assert post(hooks, "/hooks/gptimg/tenant1", payload("gen_t2"), "whsec_tenant1_key")[0] == 200
    assert post(hooks, "/hooks/gptimg/other", payload("gen_o"), "whsec_other_key")[0] == 404
    assert looked_up == ["tenant1", "other"]  # cached for account_cache seconds
    hooks.close()


def test_bad_accounts_fail_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="account name"):
        Account("Acme Corp", "whsec_x")
    with pytest.raises(ConfigurationError, match=r"whsec_|secret"):
        Account("acme", "")
    with pytest.raises(ConfigurationError, match="two accounts"):
        Webhooks(store="memory://", accounts=[ACME, Account("acme", "whsec_y")])


def test_secrets_never_show_in_an_accounts_repr() -> None:
    assert "whsec" not in repr(ACME)
    assert "gimg" not in repr(ACME)


def test_the_asgi_middleware_routes_every_account_path() -> None:
    hooks = two_accounts()
    hooks.on("generation.succeeded")(lambda e: None)
    app = Starlette(middleware=[Middleware(WebhookMiddleware, receiver=hooks)])

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            out = []
            for path, secret in [
                ("/hooks/gptimg/acme", "whsec_acme_new"),
                ("/hooks/gptimg/globex", "whsec_globex"),
                ("/hooks/gptimg/globex", "whsec_acme_new"),
                ("/hooks/gptimg/nobody", "whsec_globex"),
            ]:
                body = payload(f"gen_{path[-4:]}_{secret[-3:]}")
                out.append(
                    (
                        await client.post(path, content=body, headers=headers(body, secret))
                    ).status_code
                )
            return out

    assert asyncio.run(run()) == [200, 200, 401, 404]
    hooks.close()


def test_flask_extension_serves_each_account() -> None:
    from flask import Flask

    from gptimg_webhooks.flask import GptimgWebhooks

    app = Flask(__name__)
    receiver = two_accounts()
    receiver.on("generation.succeeded")(lambda e: None)
    GptimgWebhooks(app, receiver=receiver)
    client = app.test_client()
    body = payload("gen_flask_acct")
    sig = {**headers(body, "whsec_globex")}
    assert client.post("/hooks/gptimg/globex", data=body, headers=sig).status_code == 200
    assert client.post("/hooks/gptimg/acme", data=body, headers=sig).status_code == 401
    sig["X-Gptimg-Signature"] = sign(body, "whsec_acme_new")
    assert client.post("/hooks/gptimg/acme", data=body, headers=sig).status_code == 200
    receiver.close()
