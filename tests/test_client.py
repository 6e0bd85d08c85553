"""The API client against the local provider: in-process (async) and over real HTTP (sync)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from gptimg_webhooks import ConfigurationError, Generation, WebhookError
from gptimg_webhooks.cli._server import BackgroundServer
from gptimg_webhooks.client import (
    ApiError,
    ApiUnavailable,
    AsyncClient,
    Client,
    ContentPolicy,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PlanRequired,
    RateLimited,
    Submitted,
    Unauthorized,
    Upload,
)
from gptimg_webhooks.testing import LocalProvider
from tests.support.servers import free_port


def run_async(
    scenario: Callable[[LocalProvider, Callable[..., AsyncClient]], Awaitable[None]],
    **options: Any,
) -> None:
    """Run ``scenario`` with a provider and a factory of in-process async clients."""

    async def main() -> None:
        provider = LocalProvider(**{"time_scale": 3000, **options})
        clients: list[AsyncClient] = []

        def client(key: str, **kwargs: Any) -> AsyncClient:
            made = AsyncClient(
                key,
                base_url="http://testserver/api/v1",
                transport=httpx.ASGITransport(app=provider),
                **kwargs,
            )
            clients.append(made)
            return made

        try:
            await scenario(provider, client)
        finally:
            for made in clients:
                await made.aclose()
            await provider.aclose()

    asyncio.run(main())


@pytest.fixture
def served() -> Iterator[tuple[LocalProvider, str]]:
    """The provider under a real uvicorn on 127.0.0.1; yields it and its API base URL."""
    provider = LocalProvider(time_scale=3000)
    with BackgroundServer(provider, "127.0.0.1", free_port()) as server:
        yield provider, f"{server.url}/api/v1"
        provider.wait_idle(timeout=30)  # no generation left pending when the loop stops


def test_sync_client_submits_and_reads_the_generation_over_http(
    served: tuple[LocalProvider, str],
) -> None:
    provider, base = served
    key = provider.add_key()
    with Client(key, base_url=base) as api:
        submitted = api.generate("a lighthouse", n=2, quality="low", size="1024x1536")
        assert isinstance(submitted, Submitted) and submitted.status == "queued"
        provider.wait_idle(timeout=30)
        generation = api.get_generation(submitted.generation_id)
    assert isinstance(generation, Generation)
    assert generation.generation_id == submitted.generation_id
    assert generation.status == "succeeded" and generation.cost_credits == 2
    assert [(o.width, o.height) for o in generation.outputs] == [(1024, 1536)] * 2
    png = httpx.get(generation.outputs[0].png or "", timeout=5)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_key_comes_from_the_environment_and_a_missing_one_fails_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GPTIMG_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="GPTIMG_API_KEY"):
        Client()
    with pytest.raises(ConfigurationError, match="gimg_"):
        Client("sk_not_a_gimg_key")
    monkeypatch.setenv("GPTIMG_API_KEY", "gimg_from_env")
    with Client() as api:
        assert api.base_url == "https://gptimage2.plus/api/v1"
        assert api._headers("GET", None)["Authorization"] == "Bearer gimg_from_env"


@pytest.mark.parametrize(
    ("setup", "call", "error", "status"),
    [
        ({"key": "gimg_unknown"}, ("generate", "x"), Unauthorized, 401),
        ({"plan": "free"}, ("generate", "x"), PlanRequired, 403),
        ({"credits": 1}, ("generate", "x"), InsufficientCredits, 402),
        ({}, ("generate", "nope [policy]"), ContentPolicy, 422),
        ({}, ("generate", ""), InvalidRequest, 400),
        ({}, ("get_generation", "gen_missing"), NotFound, 404),
        ({}, ("upload", "in.gif"), InvalidRequest, 400),
    ],
)
def test_api_errors_map_to_the_error_tree(
    setup: dict[str, Any], call: tuple[str, str], error: type[ApiError], status: int
) -> None:
    async def scenario(p: LocalProvider, client: Callable[..., AsyncClient]) -> None:
        real = p.add_key(credits=setup.get("credits", 100), plan=setup.get("plan", "pro"))
        api = client(setup.get("key", real))
        method, arg = call
        pending = (
            api.upload(arg, "image/gif", 10) if method == "upload" else getattr(api, method)(arg)
        )
        with pytest.raises(error) as caught:
            await pending
        exc = caught.value
        assert isinstance(exc, WebhookError)
        assert exc.status == exc.status_code == status
        assert exc.message and isinstance(exc.body, dict)

    run_async(scenario)


def test_every_post_carries_a_fresh_uuid4_idempotency_key() -> None:
    async def scenario(p: LocalProvider, client: Callable[..., AsyncClient]) -> None:
        api = client(p.add_key())
        await api.generate("a")
        await api.generate("b")
        await api.upload("in.png", "image/png", 10)
        posts = [c for c in p.calls if c.method == "POST"]
        keys = [c.idempotency_key for c in posts]
        assert len(posts) == 3 and len(set(keys)) == 3
        assert all(k is not None and uuid.UUID(k).version == 4 for k in keys)
        assert all(c.idempotency_key is None for c in p.calls if c.method == "GET")

    run_async(scenario)


def test_concurrency_stays_within_five_requests() -> None:
    async def scenario(p: LocalProvider, client: Callable[..., AsyncClient]) -> None:
        key = p.add_key()
        api = client(key)
        done = await asyncio.gather(*(api.generate(f"cat {i}") for i in range(12)))
        assert len({s.generation_id for s in done}) == 12
        assert p.peak_in_flight(key) == 5
        assert [c.status for c in p.calls] == [202] * 12

    run_async(scenario, latency=10.0, time_scale=20)  # each answer takes half a second


def test_a_lower_concurrency_setting_is_honoured() -> None:
    async def scenario(p: LocalProvider, client: Callable[..., AsyncClient]) -> None:
        key = p.add_key()
        api = client(key, max_concurrency=2)
        await asyncio.gather(*(api.generate("x") for _ in range(5)))
        assert p.peak_in_flight(key) == 2

    run_async(scenario, latency=10.0, time_scale=20)  # each answer takes half a second


def test_quota_from_the_headers_is_waited_out_before_any_429() -> None:
    async def scenario(p: LocalProvider, client: Callable[..., AsyncClient]) -> None:
        key = p.add_key()
        api = client(key)
        await api.generate("first")  # learns the quota from the headers
        await asyncio.gather(*(api.generate(f"cat {i}") for i in range(9)))
        statuses = [c.status for c in p.calls]
        assert statuses == [202] * 10  # never a 429: the client waited for new windows
        assert len(p.charges) == 10

    # A 4-request window lasting one simulated hour, which is one real second here.
    run_async(scenario, rate_limit=4, time_scale=3600)


def test_a_429_is_waited_out_by_retry_after_with_the_same_idempotency_key() -> None:
    async def scenario(p: LocalProvider, client: Callable[..., AsyncClient]) -> None:
        key = p.add_key()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=p), base_url="http://testserver"
        ) as raw:
            for _ in range(2):  # spend the quota behind the client's back
                await raw.get("/api/v1/generations/x", headers={"Authorization": f"Bearer {key}"})
        submitted = await client(key).generate("after the wait")
        mine = [c for c in p.calls if c.path == "/api/v1/generate"]
        assert [c.status for c in mine] == [429, 202]
        assert mine[0].idempotency_key == mine[1].idempotency_key
        assert [c.generation_id for c in p.charges] == [submitted.generation_id]

    run_async(scenario, rate_limit=2, time_scale=3600)


def test_rate_limited_is_raised_when_waiting_is_not_allowed() -> None:
    async def scenario(p: LocalProvider, client: Callable[..., AsyncClient]) -> None:
        key = p.add_key()
        await client(key).generate("spends the quota")
        fresh = client(key, max_retries=0)
        with pytest.raises(RateLimited) as caught:
            await fresh.generate("limited")
        assert caught.value.retry_after is not None and caught.value.retry_after >= 1
        assert caught.value.status_code == 429
        bounded = client(key, max_wait=0.5)
        with pytest.raises(RateLimited):
            await bounded.generate("the wait is longer than max_wait")
        assert len(p.charges) == 1

    run_async(scenario, rate_limit=1, time_scale=1)


def test_a_retry_after_a_lost_answer_reuses_the_key_and_charges_once(
    served: tuple[LocalProvider, str],
) -> None:
    provider, base = served
    key = provider.add_key()
    provider.stall_next(1, 3000 * 2.0)  # the first answer comes 2 real seconds late
    with Client(key, base_url=base, timeout=0.5) as api:
        submitted = api.generate("a lighthouse")
    assert [c.generation_id for c in provider.charges] == [submitted.generation_id]
    assert provider.balance(key) == 998
    deadline = time.monotonic() + 10
    while len(provider.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    posts = [c for c in provider.calls if c.path == "/api/v1/generate"]
    assert len(posts) == 2 and len({c.idempotency_key for c in posts}) == 1


def test_no_answer_at_all_is_api_unavailable_after_bounded_retries() -> None:
    with (
        Client(
            "gimg_x", base_url=f"http://127.0.0.1:{free_port()}/api/v1", max_retries=1, max_wait=0.1
        ) as api,
        pytest.raises(ApiUnavailable, match="no answer"),
    ):
        api.get_generation("gen_x")


def test_upload_then_put_then_edit() -> None:
    image = b"\x89PNG\r\n\x1a\n" + b"\0" * 32

    async def scenario(p: LocalProvider, client: Callable[..., AsyncClient]) -> None:
        key = p.add_key()
        api = client(key)
        upload = await api.upload("in.png", "image/png", len(image))
        assert isinstance(upload, Upload) and upload.key
        await api.put_upload(upload, image, "image/png")
        with pytest.raises(ApiError):
            await api.put_upload(upload, image + image, "image/png")  # larger than announced
        submitted = await api.generate("make it blue", type="edit", input_image_keys=[upload.key])
        await p.drain()
        generation = await api.get_generation(submitted.generation_id)
        assert generation.type == "edit" and generation.status == "succeeded"

    run_async(scenario)
