"""The local provider against the reference (/work/shared/PLATFORM.md and its originals).

Each test drives the provider in-process through ``httpx.ASGITransport``; deliveries go
to an in-process receiver (``apps=``) that records every request exactly as it came.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from gptimg_webhooks import Generation, parse_event, verify
from gptimg_webhooks.testing import FakeClock, LocalProvider, wire_json
from tests.support.servers import free_port, running, uvicorn_argv

RECEIVER = "http://receiver.test"
COOKIE = {"Cookie": "session=s1"}
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@dataclass
class Receiver:
    """An ASGI endpoint recording each POST; answers ``status`` (or 200)."""

    status: int = 200
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append((headers, body))
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


Scenario = Callable[[LocalProvider, httpx.AsyncClient, Receiver], Awaitable[None]]


def run(scenario: Scenario, **options: Any) -> None:
    """Run ``scenario`` against a fresh provider and receiver."""
    receiver = Receiver()
    options.setdefault("time_scale", 3000)

    async def main() -> None:
        provider = LocalProvider(apps={RECEIVER: receiver}, **options)
        transport = httpx.ASGITransport(app=provider)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            try:
                await scenario(provider, http, receiver)
            finally:
                await provider.aclose()

    asyncio.run(main())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def register(http: httpx.AsyncClient, events: list[str] | None = None) -> dict[str, Any]:
    r = await http.post(
        "/api/account/webhooks",
        json={
            "url": f"{RECEIVER}/hooks/gptimg",
            "events": events or ["generation.succeeded", "generation.failed"],
            "label": "tests",
        },
        headers=COOKIE,
    )
    assert r.status_code == 201, r.text
    found: dict[str, Any] = r.json()
    return found


async def generate(http: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    body.setdefault("prompt", "a lighthouse at dusk")
    return await http.post("/api/v1/generate", json=body, headers=bearer(key))


# -- account: webhook registration ---------------------------------------------------------


def test_registration_needs_a_session_cookie_and_shows_the_secret_once() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        body = {"url": f"{RECEIVER}/h", "events": ["generation.succeeded"], "label": "x"}
        assert (await http.post("/api/account/webhooks", json=body)).status_code == 401
        assert (await http.get("/api/account/webhooks")).status_code == 401
        created = await register(http)
        assert set(created) == {"id", "secret"}
        assert created["secret"].startswith("whsec_")
        listing = await http.get("/api/account/webhooks", headers=COOKIE)
        assert listing.status_code == 200
        assert created["secret"] not in listing.text
        (entry,) = listing.json()["webhooks"]
        assert entry["id"] == created["id"] and entry["enabled"] is True
        assert entry["events"] == ["generation.succeeded", "generation.failed"]

    run(scenario)


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://x/h", "events": ["generation.succeeded"]},
        {"url": f"{RECEIVER}/h", "events": ["generation.exploded"]},
        {"url": f"{RECEIVER}/h", "events": []},
        {"events": ["generation.succeeded"]},
    ],
)
def test_registration_refuses_a_bad_url_or_event_with_400(body: dict[str, Any]) -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        r = await http.post("/api/account/webhooks", json=body, headers=COOKIE)
        assert r.status_code == 400 and r.json()["message"]
        assert p.endpoints == {}

    run(scenario)


# -- the API: authentication, plan, credits, validation, policy ------------------------------


def test_missing_or_unknown_key_is_401_with_rate_limit_headers() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        p.add_key()
        for headers in ({}, bearer("gimg_unknown"), {"Authorization": "Basic x"}):
            r = await http.post("/api/v1/generate", json={"prompt": "x"}, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"] == "unauthorized"
            assert all(h in r.headers for h in RATE_HEADERS)

    run(scenario)


def test_wrong_method_is_405_and_unknown_route_404_with_rate_limit_headers() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        wrong = await http.get("/api/v1/generate", headers=bearer(key))
        assert wrong.status_code == 405
        missing = await http.delete("/api/v1/nothing", headers=bearer(key))
        assert missing.status_code == 404
        assert all(h in r.headers for r in (wrong, missing) for h in RATE_HEADERS)

    run(scenario)


def test_free_plan_is_403_and_no_credits_is_402() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        free = p.add_key(plan="free")
        broke = p.add_key(credits=0)
        r = await generate(http, free)
        assert r.status_code == 403 and r.json()["error"] == "plan_required"
        assert all(h in r.headers for h in RATE_HEADERS)
        r = await generate(http, broke)
        assert r.status_code == 402 and r.json()["error"] == "insufficient_credits"
        assert all(h in r.headers for h in RATE_HEADERS)
        assert p.charges == []

    run(scenario)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"type": "upscale"}, "type"),
        ({"type": "edit"}, "inputImageKeys"),
        ({"type": "edit", "inputImageKeys": ["uploads/nope"]}, "inputImageKeys"),
        ({"inputImageKeys": ["a", "b", "c", "d", "e"]}, "inputImageKeys"),
        ({"size": "512x512"}, "size"),
        ({"quality": "ultra"}, "quality"),
        ({"n": 0}, "n"),
        ({"n": 5}, "n"),
        ({"n": "2"}, "n"),
    ],
)
def test_generate_validation_is_400_naming_the_field(body: dict[str, Any], field: str) -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        payload = {"prompt": "a cat", **body}
        if payload["prompt"] is None:
            del payload["prompt"]
        r = await http.post("/api/v1/generate", json=payload, headers=bearer(key))
        assert r.status_code == 400, r.text
        assert r.json()["message"].startswith(field)
        assert all(h in r.headers for h in RATE_HEADERS)
        assert p.balance(key) == 1000

    run(scenario)


def test_prompt_of_exactly_4000_characters_is_accepted() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        r = await generate(http, p.add_key(), prompt="x" * 4000)
        assert r.status_code == 202

    run(scenario)


def test_content_policy_refusal_is_422_and_charges_nothing() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        r = await generate(http, key, prompt="something [policy]")
        assert r.status_code == 422 and r.json()["error"] == "content_policy"
        assert all(h in r.headers for h in RATE_HEADERS)
        assert p.balance(key) == 1000 and p.charges == []

    run(scenario)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filename": "x" * 201}, "filename"),
        ({"filename": ""}, "filename"),
        ({"contentType": "image/gif"}, "contentType"),
        ({"size": 10 * 1024 * 1024 + 1}, "size"),
        ({"size": 0}, "size"),
    ],
)
def test_upload_validation_is_400_naming_the_field(body: dict[str, Any], field: str) -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        payload = {"filename": "in.png", "contentType": "image/png", "size": 100, **body}
        r = await http.post("/api/v1/upload", json=payload, headers=bearer(p.add_key()))
        assert r.status_code == 400 and r.json()["message"].startswith(field)

    run(scenario)


def test_upload_gives_a_put_url_valid_five_minutes_and_a_key_for_edits() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 56

    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        body = {"filename": "in.png", "contentType": "image/png", "size": len(png)}
        r = await http.post("/api/v1/upload", json=body, headers=bearer(key))
        assert r.status_code == 200 and set(r.json()) == {"url", "key"}
        url, image_key = r.json()["url"], r.json()["key"]
        put = await http.put(url, content=png, headers={"Content-Type": "image/png"})
        assert put.status_code == 200
        wrong = await http.put(url, content=png, headers={"Content-Type": "image/jpeg"})
        assert wrong.status_code == 400
        forged = await http.put(url.split("?")[0] + "?signature=0", content=png)
        assert forged.status_code == 403
        edit = await generate(http, key, type="edit", inputImageKeys=[image_key])
        assert edit.status_code == 202
        r = await http.post("/api/v1/upload", json=body, headers=bearer(key))
        await p.clock.sleep(301)  # the URL is now older than 5 minutes
        late = await http.put(r.json()["url"], content=png, headers={"Content-Type": "image/png"})
        assert late.status_code == 403

    # Time moves only when someone sleeps: the URL is 0 s old, then 301 s.
    run(scenario, clock=FakeClock())


# -- rate limit, concurrency, idempotency ------------------------------------------------------


def test_rate_limit_counts_down_then_429_with_retry_after_until_the_window_resets() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        remaining = []
        for _ in range(3):
            r = await http.get("/api/v1/generations/gen_none", headers=bearer(key))
            assert r.status_code == 404
            assert r.headers["x-ratelimit-limit"] == "3"
            remaining.append(int(r.headers["x-ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        r = await generate(http, key)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert p.charges == []
        await p.clock.sleep(3600)  # an hour later: a new window
        r = await generate(http, key)
        assert r.status_code == 202
        assert r.headers["x-ratelimit-remaining"] == "2"

    run(scenario, rate_limit=3, clock=FakeClock())


def test_default_limit_is_600_an_hour_with_reset_in_epoch_seconds() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        import time

        r = await generate(http, p.add_key())
        assert r.headers["x-ratelimit-limit"] == "600"
        assert r.headers["x-ratelimit-remaining"] == "599"
        reset = int(r.headers["x-ratelimit-reset"])
        assert 3590 <= reset - time.time() <= 3601

    run(scenario, time_scale=1)


def test_a_sixth_concurrent_request_of_one_key_is_429() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        answers = await asyncio.gather(*(generate(http, key) for _ in range(6)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [202] * 5 + [429]
        (limited,) = [r for r in answers if r.status_code == 429]
        assert limited.headers["retry-after"] == "1"
        assert p.peak_in_flight(key) == 5

    run(scenario, latency=20.0, time_scale=20)  # each answer takes a real second


def test_same_idempotency_key_returns_the_existing_row_without_charging_again() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        headers = {**bearer(key), "Idempotency-Key": str(uuid.uuid4())}
        first = await http.post("/api/v1/generate", json={"prompt": "a"}, headers=headers)
        again = await http.post("/api/v1/generate", json={"prompt": "a"}, headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json()["generationId"] == again.json()["generationId"]
        assert [c.credits for c in p.charges] == [2]
        assert p.balance(key) == 998
        other = await http.post(
            "/api/v1/generate",
            json={"prompt": "a"},
            headers={**bearer(key), "Idempotency-Key": "k2"},
        )
        assert other.json()["generationId"] != first.json()["generationId"]
        assert len(p.charges) == 2

    run(scenario)


# -- lifecycle and outputs ----------------------------------------------------------------------


def test_generation_moves_queued_then_running_then_succeeded() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        gid = (await generate(http, key, n=2, size="1536x1024")).json()["generationId"]
        seen: list[str] = []
        for _ in range(500):
            r = await http.get(f"/api/v1/generations/{gid}", headers=bearer(key))
            status = r.json()["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "succeeded":
                break
            await asyncio.sleep(0.01)
        assert seen == ["queued", "running", "succeeded"]
        generation = Generation.model_validate(r.json())
        assert generation.generation_id == gid
        assert generation.cost_credits == 4 and generation.error is None
        assert generation.completed_at is not None and generation.created_at is not None
        assert [(o.width, o.height) for o in generation.outputs] == [(1536, 1024)] * 2

    run(scenario, time_scale=10, queued_for=2.0, runs_for=3.0)


def test_slow_marker_keeps_a_generation_running_longer() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        slow = (await generate(http, key, prompt="a cat [slow]")).json()["generationId"]
        quick = (await generate(http, key, prompt="a cat")).json()["generationId"]
        while p.generation(quick)["status"] != "succeeded":
            await asyncio.sleep(0.01)
        assert p.generation(slow)["status"] == "running"
        await p.drain()
        assert p.generation(slow)["status"] == "succeeded"

    run(scenario, time_scale=100, queued_for=0.0, runs_for=1.0, slow_runs_for=60.0)


def test_importing_the_test_kit_does_not_import_starlette() -> None:
    import subprocess
    import sys

    code = "import sys, gptimg_webhooks.testing; print('starlette' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_outputs_are_real_png_and_webp_images_of_the_announced_size() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        gid = (await generate(http, key, size="1024x1536")).json()["generationId"]
        await p.drain()
        (output,) = (await http.get(f"/api/v1/generations/{gid}", headers=bearer(key))).json()[
            "outputs"
        ]
        for kind, fmt in (("png", "PNG"), ("webp", "WEBP")):
            r = await http.get(output[kind])
            assert r.status_code == 200 and r.headers["content-type"] == f"image/{kind}"
            image = Image.open(io.BytesIO(r.content))
            image.load()
            assert (image.format, image.size) == (fmt, (1024, 1536))

    run(scenario)


@pytest.mark.parametrize(("marker", "status"), [("[fail]", "failed"), ("[block]", "blocked")])
def test_failed_and_blocked_generations_are_refunded(marker: str, status: str) -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        key = p.add_key()
        gid = (await generate(http, key, prompt=f"a cat {marker}", quality="high")).json()[
            "generationId"
        ]
        assert p.balance(key) == 996
        await p.drain()
        body = (await http.get(f"/api/v1/generations/{gid}", headers=bearer(key))).json()
        assert body["status"] == status and body["error"]
        assert body["outputs"] == [] and body["costCredits"] == 0
        assert p.balance(key) == 1000
        assert [c.credits for c in p.charges] == [4, -4]

    run(scenario)


def test_generations_are_private_to_their_key() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        gid = (await generate(http, p.add_key())).json()["generationId"]
        r = await http.get(f"/api/v1/generations/{gid}", headers=bearer(p.add_key()))
        assert r.status_code == 404

    run(scenario)


# -- webhook deliveries -------------------------------------------------------------------------


def test_delivery_is_signed_compact_json_with_the_reference_headers() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        secret = (await register(http))["secret"]
        key = p.add_key()
        gid = (await generate(http, key, prompt="café ☕")).json()["generationId"]
        await p.drain()
        ((headers, body),) = rx.seen
        assert headers["content-type"] == "application/json"
        assert headers["x-gptimg-event"] == "generation.succeeded"
        assert str(uuid.UUID(headers["x-gptimg-delivery"])) == headers["x-gptimg-delivery"]
        assert headers["x-gptimg-signature"] == headers["x-gptimg-signature"].lower()
        assert verify(body, headers["x-gptimg-signature"], secret) is not None
        payload = json.loads(body)
        assert wire_json(payload) == body  # compact, JSON.stringify style
        assert list(payload["data"]) == [
            "generationId",
            "type",
            "status",
            "outputs",
            "error",
            "costCredits",
            "createdAt",
            "completedAt",
        ]
        event = parse_event(payload)
        assert event.event == "generation.succeeded"
        assert event.data.generation_id == gid
        api = (await http.get(f"/api/v1/generations/{gid}", headers=bearer(key))).json()
        assert Generation.model_validate(api) == event.data

    run(scenario)


def test_failed_and_blocked_go_out_as_generation_failed_to_subscribers_only() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        await register(http, ["generation.failed"])
        key = p.add_key()
        for prompt in ("ok", "no [fail]", "no [block]"):
            await generate(http, key, prompt=prompt)
        await p.drain()
        events = sorted((h["x-gptimg-event"], json.loads(b)["data"]["status"]) for h, b in rx.seen)
        assert events == [("generation.failed", "blocked"), ("generation.failed", "failed")]

    run(scenario)


def test_failed_delivery_is_retried_after_30s_2min_10min_with_the_same_id() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        rx.status = 500
        await register(http)
        await generate(http, p.add_key())
        await p.drain()
        assert len(rx.seen) == 4
        assert len({h["x-gptimg-delivery"] for h, _ in rx.seen}) == 1
        assert len({b for _, b in rx.seen}) == 1
        assert [round(d.attempt.at) for d in p.deliveries] == [0, 30, 150, 750]
        assert [d.status for d in p.deliveries] == [500] * 4

    run(scenario, time_scale=3000)


def test_eight_consecutive_failures_disable_the_endpoint_until_re_enabled() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        rx.status = 503
        hook = (await register(http))["id"]
        key = p.add_key()
        for _ in range(2):
            await generate(http, key)
        await p.drain()
        assert len(rx.seen) == 8
        (entry,) = (await http.get("/api/account/webhooks", headers=COOKIE)).json()["webhooks"]
        assert entry["enabled"] is False
        assert entry["disabledReason"] == "consecutive_failures"
        rx.status = 200
        await generate(http, key)
        await p.drain()
        assert len(rx.seen) == 8  # disabled: nothing sent
        r = await http.post(f"/api/account/webhooks/{hook}/enable", headers=COOKIE)
        assert r.status_code == 200 and r.json()["enabled"] is True
        assert r.json()["consecutiveFailures"] == 0
        await generate(http, key)
        await p.drain()
        assert len(rx.seen) == 9 and p.deliveries[-1].status == 200

    run(scenario, time_scale=6000)


def test_a_success_resets_the_consecutive_failure_count() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        rx.status = 503
        await register(http)
        key = p.add_key()
        await generate(http, key)
        await p.drain()
        rx.status = 200
        await generate(http, key)
        await p.drain()
        (entry,) = (await http.get("/api/account/webhooks", headers=COOKIE)).json()["webhooks"]
        assert entry["consecutiveFailures"] == 0 and entry["enabled"] is True

    run(scenario, time_scale=6000)


def test_disabled_by_hand_receives_nothing_and_deleted_is_gone() -> None:
    async def scenario(p: LocalProvider, http: httpx.AsyncClient, rx: Receiver) -> None:
        hook = (await register(http))["id"]
        r = await http.post(f"/api/account/webhooks/{hook}/disable", headers=COOKIE)
        assert r.json()["enabled"] is False and r.json()["disabledReason"] == "manual"
        key = p.add_key()
        await generate(http, key)
        await p.drain()
        assert rx.seen == []
        assert (await http.post(f"/api/account/webhooks/{hook}/enable")).status_code == 401
        assert (
            await http.delete(f"/api/account/webhooks/{hook}", headers=COOKIE)
        ).status_code == 204
        assert (
            await http.post(f"/api/account/webhooks/{hook}/enable", headers=COOKIE)
        ).status_code == 404

    run(scenario)


def test_a_slow_receiver_times_out_after_5_real_seconds_and_is_retried() -> None:
    class Slow(Receiver):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if not self.seen:
                self.seen.append(({}, b""))
                await asyncio.sleep(30)
            await super().__call__(scope, receive, send)

    slow = Slow()

    async def main() -> None:
        provider = LocalProvider(apps={RECEIVER: slow}, time_scale=3000)
        provider.register_webhook(f"{RECEIVER}/hooks/gptimg")
        transport = httpx.ASGITransport(app=provider)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            await generate(http, provider.add_key())
            await provider.drain(timeout=30)
        first, second = provider.deliveries
        assert first.status is None and first.attempt.error == "timeout after 5s"
        assert 5 <= first.attempt.latency < 6
        assert second.status == 200 and second.delivery_id == first.delivery_id
        await provider.aclose()

    asyncio.run(main())


# -- end to end: a real provider server, the Starlette example as the receiver ----------------


@pytest.mark.slow
def test_provider_delivers_to_the_starlette_example_end_to_end(tmp_path: Path) -> None:
    from gptimg_webhooks.cli._server import BackgroundServer
    from gptimg_webhooks.client import Client

    provider = LocalProvider(time_scale=600)
    receiver_port = free_port()
    with BackgroundServer(provider, "127.0.0.1", free_port()) as served:
        created = httpx.post(
            f"{served.url}/api/account/webhooks",
            json={
                "url": f"http://127.0.0.1:{receiver_port}/hooks/gptimg",
                "events": ["generation.succeeded", "generation.failed"],
                "label": "starlette example",
            },
            headers=COOKIE,
            timeout=5,
        ).json()
        env = {
            "GPTIMG_WEBHOOK_SECRET": created["secret"],
            "GPTIMG_WEBHOOK_STORE": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            "GPTIMG_EXAMPLE_DATA_DIR": str(tmp_path / "data"),
        }
        argv = uvicorn_argv("examples.starlette_app.app:app", receiver_port)
        with running(argv, port=receiver_port, env=env) as receiver:
            key = provider.add_key()
            with Client(key, base_url=f"{served.url}/api/v1") as api:
                ok = api.generate("a lighthouse at dusk", n=2)
                bad = api.generate("a lighthouse [fail]")
                provider.wait_idle(timeout=60)
                generation = api.get_generation(ok.generation_id)
            rows = httpx.get(f"{receiver}/generations", timeout=5).json()
            page = httpx.get(f"{receiver}/", timeout=5).text
    by_id = {row["generationId"]: row for row in rows}
    assert len(rows) == 2
    assert by_id[ok.generation_id]["event"] == "generation.succeeded"
    assert by_id[ok.generation_id]["outputs"] == [o.model_dump() for o in generation.outputs]
    assert by_id[bad.generation_id]["event"] == "generation.failed"
    assert by_id[bad.generation_id]["status"] == "failed"
    assert generation.outputs[0].webp is not None and generation.outputs[0].webp in page
    assert [d.status for d in provider.deliveries] == [200, 200]
