"""The ASGI adapter: in-process through Starlette and FastAPI, and through real uvicorn."""

from __future__ import annotations

import asyncio
import json
import logging
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from gptimg_webhooks import GenerationSucceeded, Webhooks
from gptimg_webhooks.asgi import WebhookApp, WebhookMiddleware
from tests.support.contract import check_contract, duplicate_storm, headers, payload
from tests.support.framing import assert_quiet_log, check_framing
from tests.support.servers import free_port, running, uvicorn_argv

SECRET = "whsec_asgi_test_secret"


@pytest.fixture
def hooks() -> Webhooks:
    return Webhooks(SECRET, store="memory://", include_shared=False)


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_middleware_answers_its_path_and_passes_everything_else_through(hooks: Webhooks) -> None:
    seen: list[str] = []
    hooks.on("generation.succeeded")(lambda e: seen.append(e.data.generation_id))
    app = Starlette(
        routes=[Route("/", lambda r: PlainTextResponse("home"), methods=["GET", "POST"])]
    )
    app.add_middleware(WebhookMiddleware, receiver=hooks)
    body = payload("gen_mw")
    assert (
        call(app, "POST", "/hooks/gptimg", content=body, headers=headers(body, SECRET)).status_code
        == 200
    )
    assert seen == ["gen_mw"]
    passed = call(app, "POST", "/", content=b"{}")
    assert (passed.status_code, passed.text) == (200, "home")
    assert call(app, "GET", "/hooks/gptimg").status_code == 405


def test_fastapi_add_middleware(hooks: Webhooks) -> None:
    app = FastAPI()
    app.add_middleware(WebhookMiddleware, receiver=hooks)

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    got: list[GenerationSucceeded] = []

    @hooks.on("generation.succeeded")
    async def handle(event: GenerationSucceeded) -> None:
        got.append(event)

    body = payload("gen_fastapi")
    response = call(app, "POST", "/hooks/gptimg", content=body, headers=headers(body, SECRET))
    assert response.json() == {"ok": True, "status": "processed"}
    assert got[0].data.generation_id == "gen_fastapi"
    assert call(app, "GET", "/ping").json() == {"pong": "yes"}


def test_standalone_app_works_under_mount_and_route(hooks: Webhooks) -> None:
    seen: list[str] = []
    hooks.on("generation.succeeded")(lambda e: seen.append(e.data.generation_id))
    receiver = WebhookApp(hooks)
    app = Starlette(routes=[Route("/incoming/gptimg", receiver), Mount("/hooks", app=receiver)])
    first, second = payload("gen_route"), payload("gen_mount")
    response = call(app, "POST", "/incoming/gptimg", content=first, headers=headers(first, SECRET))
    assert response.json()["status"] == "processed"
    response = call(app, "POST", "/hooks/gptimg", content=second, headers=headers(second, SECRET))
    assert response.json()["status"] == "processed"
    assert seen == ["gen_route", "gen_mount"]


def test_body_is_refused_while_streaming_past_the_cap() -> None:
    hooks = Webhooks(SECRET, store="memory://", max_body_size=1000, include_shared=False)
    received: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"x" * 600, "more_body": True}  # endless

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/hooks/gptimg", "headers": []}
    asyncio.run(WebhookMiddleware(lambda s, r, w: None, receiver=hooks)(scope, receive, send))  # type: ignore[arg-type, return-value]
    assert sent[0]["status"] == 413
    assert len(received) == 2  # stopped as soon as the cap was passed


def test_declared_content_length_over_the_cap_is_refused_before_reading() -> None:
    hooks = Webhooks(SECRET, store="memory://", max_body_size=1000, include_shared=False)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("body must not be read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/hooks/gptimg",
        "headers": [(b"content-length", b"5000")],
    }
    asyncio.run(WebhookApp(hooks)(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413


def test_a_body_cut_short_by_a_disconnect_is_never_processed() -> None:
    # Found by the hostile table (content_length_longer_than_body): the whole signed body
    # arrived, then the client left before the Content-Length it declared.
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    ran: list[str] = []
    hooks.on("generation.succeeded")(lambda e: ran.append(e.data.generation_id))
    body = payload("gen_cut")
    messages = [
        {"type": "http.request", "body": body, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in headers(body, SECRET).items()]
    scope = {"type": "http", "method": "POST", "path": "/hooks/gptimg", "headers": raw}
    asyncio.run(WebhookApp(hooks)(scope, receive, send))  # type: ignore[arg-type]
    # Nobody is left to hear an answer; whatever is sent, it is never a success.
    assert all(m["status"] >= 400 for m in sent if m["type"] == "http.response.start")
    assert ran == []
    assert list(hooks.store.records()) == []


@pytest.fixture(scope="module")
def starlette_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The Starlette example under real uvicorn with 4 workers and the default SQLite ledger.

    Yield its URL and its log file.
    """
    data = tmp_path_factory.mktemp("starlette")
    port = free_port()
    env = {"GPTIMG_WEBHOOK_SECRET": SECRET, "GPTIMG_EXAMPLE_DATA_DIR": str(data)}
    env.pop("GPTIMG_WEBHOOK_STORE", None)
    argv = uvicorn_argv("examples.starlette_app.app:app", port, workers=4)
    # The default ledger is a SQLite file in the working directory: run from the data dir.
    env["GPTIMG_WEBHOOK_STORE"] = ""
    log = Path(data) / "server.log"
    with running(argv, port=port, env=env, cwd=Path(data), log_path=log) as base:
        yield base, log
    assert (Path(data) / "gptimg_webhooks.sqlite3").exists()


@pytest.mark.slow
def test_http_contract_through_real_uvicorn(starlette_example: tuple[str, Path]) -> None:
    checked = check_contract(starlette_example[0], SECRET)
    assert {c.status for c in checked} == {200, 202, 400, 401, 405, 409, 413, 415, 500}
    assert len(checked) >= 24


@pytest.mark.slow
def test_concurrent_duplicates_across_four_uvicorn_workers_run_once(
    starlette_example: tuple[str, Path],
) -> None:
    duplicate_storm(starlette_example[0], SECRET, n=500)


@pytest.mark.slow
def test_chunked_and_mismatched_bodies_through_real_uvicorn(
    starlette_example: tuple[str, Path],
) -> None:
    base, log = starlette_example
    mark = log.stat().st_size
    assert len(check_framing(base, SECRET)) == 7
    assert_quiet_log(log, since=mark)


def drive(app: Any, scope: dict[str, Any], messages: Iterator[dict[str, Any]]) -> list[Any]:
    """Run one request through ``app``, receiving ``messages`` one by one; return what it sent."""
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def post_scope(*extra: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/hooks/gptimg", "headers": list(extra)}


def test_a_mib_body_in_two_byte_chunks_costs_about_the_body_in_memory() -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    size = hooks.max_body_size
    head, tail = b'{"event":"generation.succeeded","pad":"', b'"}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    fields = [(k.lower().encode(), v.encode()) for k, v in headers(body, SECRET + "x").items()]

    def messages() -> Iterator[dict[str, Any]]:
        view = memoryview(body)
        for i in range(0, size, 2):
            yield {"type": "http.request", "body": bytes(view[i : i + 2]), "more_body": True}
        yield {"type": "http.request", "body": b"", "more_body": False}

    app = WebhookApp(hooks)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        sent = drive(app, post_scope(*fields), messages())
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert sent[0]["status"] == 401  # read whole, then refused on the (wrong) signature
    # The buffer, the final bytes copy and a little slack: 4 bodies' worth at most.
    assert peak < 4 * size, f"peak growth {peak / size:.1f}x the body"
    print(f"peak growth reading a {size} byte body in 2-byte chunks: {peak / size:.2f}x")


def test_a_chunked_body_is_read_whole() -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    seen: list[str] = []
    hooks.on("generation.succeeded")(lambda e: seen.append(e.data.generation_id))
    body = payload("gen_chunks")
    fields = [(k.lower().encode(), v.encode()) for k, v in headers(body, SECRET).items()]
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    messages = iter(
        [{"type": "http.request", "body": p, "more_body": True} for p in pieces]
        + [{"type": "http.request", "body": b"", "more_body": False}]
    )
    sent = drive(
        WebhookApp(hooks), post_scope(*fields, (b"transfer-encoding", b"chunked")), messages
    )
    assert json.loads(sent[1]["body"]) == {"ok": True, "status": "processed"}
    assert seen == ["gen_chunks"]


def test_client_disconnect_mid_body_sends_nothing_and_logs_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    body = payload("gen_gone")
    fields = [(k.lower().encode(), v.encode()) for k, v in headers(body, SECRET).items()]
    ran: list[object] = []
    hooks.on("generation.succeeded")(ran.append)
    messages = iter([{"type": "http.request", "body": body[:40], "more_body": True}])
    with caplog.at_level(logging.DEBUG, logger="gptimg_webhooks"):
        sent = drive(WebhookApp(hooks), post_scope(*fields), messages)
    assert sent == []
    assert ran == []
    records = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.INFO]
    assert all(r.exc_info is None for r in caplog.records)


def test_body_short_of_its_content_length_is_400_not_processed() -> None:
    hooks = Webhooks(SECRET, store="memory://", include_shared=False)
    body = payload("gen_short")
    fields = [(k.lower().encode(), v.encode()) for k, v in headers(body, SECRET).items()]
    length = (b"content-length", str(len(body) + 10).encode())
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent = drive(WebhookApp(hooks), post_scope(*fields, length), messages)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"] == "invalid_payload"
