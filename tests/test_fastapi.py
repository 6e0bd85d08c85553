"""document_webhooks: a FastAPI app shows the webhook in /openapi.json and serves as before."""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gptimg_webhooks import GenerationFailed, GenerationSucceeded, WebhookError
from gptimg_webhooks.testing import events, random_secret, signed
from tests.support.servers import free_port, running, uvicorn_argv

APP = """
from fastapi import FastAPI

from gptimg_webhooks import Webhooks
from gptimg_webhooks.asgi import WebhookMiddleware
from gptimg_webhooks.fastapi import document_webhooks

hooks = Webhooks(store="memory://", path="/incoming/gptimg")
seen = []

@hooks.on("generation.succeeded")
async def succeeded(event):
    seen.append(event.data.generation_id)

app = FastAPI(title="shop")
app.add_middleware(WebhookMiddleware, receiver=hooks)

@app.get("/generations")
def generations() -> list[str]:
    return seen

document_webhooks(app, hooks)
"""
PATH = "/incoming/gptimg"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where: Path = tmp_path_factory.mktemp("fastapi_app")
    (where / "shop.py").write_text(textwrap.dedent(APP))
    return where


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[tuple[str, str]]:
    secret = random_secret()
    port = free_port()
    argv = [*uvicorn_argv("shop:app", port), "--app-dir", str(folder)]
    with running(argv, port=port, env={"GPTIMG_WEBHOOK_SECRET": secret}) as base:
        yield base, secret


@pytest.fixture(scope="module")
def schema(folder: Path, monkeypatch_module: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch_module.setenv("GPTIMG_WEBHOOK_SECRET", random_secret())
    spec = importlib.util.spec_from_file_location("shop_openapi", folder / "shop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    document: dict[str, Any] = module.app.openapi()  # what FastAPI serves at /openapi.json
    return document


def _resolve(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    node: dict[str, Any] = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _statuses() -> set[str]:
    # Every answer the error tree can give a POST; 405 only concerns other methods.
    found: set[str] = set()
    todo: list[type[WebhookError]] = [WebhookError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        # The API client's errors are answers *to* the app, not the receiver's.
        receivers = cls.__module__.startswith("gptimg_webhooks._core")
        if receivers and cls.status != 405:
            found.add(str(cls.status))
    return found


@pytest.mark.parametrize("model", [GenerationSucceeded, GenerationFailed])
def test_each_event_is_a_webhook_with_its_typed_body(
    schema: dict[str, Any], model: type[GenerationSucceeded | GenerationFailed]
) -> None:
    name = model.model_fields["event"].default
    post = schema["webhooks"][name]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = _resolve(schema, ref)
    assert body["properties"]["event"]["const"] == name
    data = _resolve(schema, body["properties"]["data"]["$ref"])
    assert "generationId" in data["properties"]
    assert "outputs" in data["properties"]
    headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
    assert headers == {"X-Gptimg-Signature", "X-Gptimg-Delivery", "X-Gptimg-Event"}


def test_webhook_path_documents_post_with_both_events(schema: dict[str, Any]) -> None:
    post = schema["paths"][PATH]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    names = {_resolve(schema, one["$ref"])["title"] for one in body["oneOf"]}
    assert names == {"GenerationSucceeded", "GenerationFailed"}
    assert body["discriminator"]["propertyName"] == "event"


def test_webhook_path_documents_every_answer_of_the_contract(schema: dict[str, Any]) -> None:
    answers = schema["paths"][PATH]["post"]["responses"]
    assert {"200", "401", "409", "503"} <= set(answers)
    assert _statuses() <= set(answers)
    assert "422" not in answers  # FastAPI's own validation answer; the receiver never sends it
    refused = _resolve(schema, answers["401"]["content"]["application/json"]["schema"]["$ref"])
    assert set(refused["properties"]) == {"ok", "error", "message"}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_app_routes_and_deliveries_are_unchanged(
    server: tuple[str, str], schema: dict[str, Any]
) -> None:
    base, secret = server
    served = httpx.get(base + "/openapi.json", timeout=10).json()
    assert served["webhooks"] == schema["webhooks"]
    assert served["paths"][PATH] == schema["paths"][PATH]
    sample = events.succeeded()
    delivery = signed(sample, secret)
    answer = httpx.post(base + PATH, content=delivery.body, headers=delivery.headers, timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "status": "processed"}
    assert sample.event.data.generation_id in httpx.get(base + "/generations", timeout=10).json()
    # The documented webhook names are not routes of the app.
    assert httpx.post(base + "/generation.succeeded", timeout=10).status_code == 404
