"""The view: import paths, CSRF, login, ATOMIC_REQUESTS, raw body, size caps, sync/async."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from typing import Any

import django
import pytest
from asgiref.sync import iscoroutinefunction
from django.db import connections
from django.test import AsyncClient, Client
from django.urls import reverse

import gptimg_webhooks
from gptimg_webhooks import Delivery, Event, GenerationSucceeded, Webhooks
from gptimg_webhooks.django import webhook_view
from gptimg_webhooks.django.apps import autodiscover
from tests.django.conftest import delivery, signed

pytestmark = pytest.mark.django_db(transaction=True)


def post(
    client: Any, body: bytes, headers: dict[str, str], path: str = "/hooks/gptimg", **kw: Any
) -> Any:
    kw.setdefault("content_type", "application/json")
    return client.post(path, body, headers=headers, **kw)


def test_delivery_runs_its_handler_once_and_duplicates_are_answered_200(hooks: Webhooks) -> None:
    seen: list[str] = []
    hooks.on("generation.succeeded")(lambda e: seen.append(e.data.generation_id))
    body, headers = delivery("gen_view_1")
    client = Client()
    first = post(client, body, headers)
    assert (first.status_code, first.json()["status"]) == (200, "processed")
    assert first["Content-Type"] == "application/json"
    forged = {**headers, "X-Gptimg-Delivery": "7d4c1c2e-0000-4000-8000-000000000001"}
    assert post(client, body, forged).json()["status"] == "duplicate"
    assert seen == ["gen_view_1"]


def test_included_urls_mount_the_view_under_their_app_name(hooks: Webhooks) -> None:
    url = reverse("gptimg_webhooks:receive")
    assert url == "/included/hooks/gptimg"
    body, headers = delivery()
    assert post(Client(), body, headers, path=url).status_code == 200


def test_handlers_registered_with_the_module_level_on_run(
    isolated_shared_registry: None, hooks: Webhooks
) -> None:
    seen: list[str] = []

    @gptimg_webhooks.on("generation.succeeded")
    def handler(event: GenerationSucceeded) -> None:
        seen.append(event.data.generation_id)

    body, headers = delivery("gen_shared")
    assert post(Client(), body, headers).status_code == 200
    assert seen == ["gen_shared"]


def test_webhooks_modules_of_installed_apps_are_autodiscovered(
    isolated_shared_registry: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "tests.django.discoverable.webhooks", raising=False)
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "tests.django.discoverable"]
    autodiscover()
    handlers, _ = gptimg_webhooks.shared_registry.lookup("generation.failed")
    assert [h.func.__module__ for h in handlers] == ["tests.django.discoverable.webhooks"]


def test_csrf_protection_does_not_block_the_view(hooks: Webhooks) -> None:
    body, headers = delivery()
    assert post(Client(enforce_csrf_checks=True), body, headers).status_code == 200


@pytest.mark.skipif(django.VERSION < (5, 1), reason="LoginRequiredMiddleware is Django 5.1+")
def test_login_required_middleware_lets_deliveries_through(hooks: Webhooks, settings: Any) -> None:
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "django.contrib.auth.middleware.LoginRequiredMiddleware",
    ]
    client = Client()
    assert client.get("/admin/doesnotexist/").status_code == 302  # the middleware is on
    body, headers = delivery()
    assert post(client, body, headers).status_code == 200


def test_view_is_exempt_from_atomic_requests_on_every_database() -> None:
    assert set(connections) <= webhook_view._non_atomic_requests


def test_with_atomic_requests_a_concurrent_duplicate_sees_the_claim_and_gets_409(
    hooks: Webhooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    started, release = threading.Event(), threading.Event()

    @hooks.on("generation.succeeded")
    def slow(event: Event) -> None:
        started.set()
        release.wait(10)

    body, headers = delivery()
    results: list[int] = []

    def first() -> None:
        try:
            results.append(post(Client(), body, headers).status_code)
        finally:
            connections.close_all()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(10)
        # The first copy's claim committed on its own, outside the request transaction.
        assert post(Client(), body, headers).status_code == 409
    finally:
        release.set()
        thread.join(10)
    assert results == [200]


def test_body_is_read_raw_even_with_a_form_content_type(hooks: Webhooks) -> None:
    seen: list[str] = []
    hooks.on("generation.succeeded")(lambda e: seen.append(e.data.generation_id))
    body, headers = delivery("gen_form")
    client = Client()
    response = post(client, body, headers, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert seen == ["gen_form"]


def test_body_over_the_size_cap_is_413(hooks: Webhooks, settings: Any) -> None:
    settings.GPTIMG_WEBHOOKS = {**settings.GPTIMG_WEBHOOKS, "MAX_BODY_SIZE": 1000}
    body = b'{"event":"generation.succeeded","pad":"' + b"x" * 2000 + b'"}'
    response = post(Client(), body, signed(body))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_body_over_djangos_upload_limit_is_413_not_500(hooks: Webhooks, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 500  # below the receiver's own 1 MiB cap
    body = b'{"event":"generation.succeeded","pad":"' + b"x" * 1000 + b'"}'
    response = post(Client(), body, signed(body))
    assert response.status_code == 413


class Counted(io.RawIOBase):
    """A WSGI input of ``data`` then endless bytes (or an error), counting what was read."""

    def __init__(self, data: bytes = b"", *, endless: bool = False, error: bool = False) -> None:
        self.data, self.endless, self.error = data, endless, error
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = len(buffer)
        if self.read_bytes >= len(self.data):
            if self.error:  # like gunicorn's chunk parser on broken framing: not an OSError
                raise ValueError("invalid chunk size")
            if not self.endless:
                return 0
            buffer[:n] = b"x" * n
        else:
            n = min(n, len(self.data) - self.read_bytes)
            buffer[:n] = self.data[self.read_bytes : self.read_bytes + n]
        self.read_bytes += n
        return n


def post_chunked(stream: Counted, headers: dict[str, str], terminated: bool = True) -> Any:
    """POST with no Content-Length and Transfer-Encoding: chunked, as gunicorn passes it on."""
    environ: dict[str, Any] = {
        "CONTENT_LENGTH": "",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": stream,
    }
    if terminated:
        environ["wsgi.input_terminated"] = True
    return Client().post("/hooks/gptimg", b"", "application/json", headers=headers, **environ)


@pytest.mark.parametrize("terminated", [True, False], ids=["terminated", "best-effort"])
def test_chunked_body_under_wsgi_is_read_whole(hooks: Webhooks, terminated: bool) -> None:
    seen: list[str] = []
    hooks.on("generation.succeeded")(lambda e: seen.append(e.data.generation_id))
    body, headers = delivery("gen_wsgi_chunked")
    response = post_chunked(Counted(body), headers, terminated)
    assert (response.status_code, response.json()["status"]) == (200, "processed")
    assert seen == ["gen_wsgi_chunked"]


def test_chunked_body_over_the_cap_stops_reading_one_byte_past_it(
    hooks: Webhooks, settings: Any
) -> None:
    settings.GPTIMG_WEBHOOKS = {**settings.GPTIMG_WEBHOOKS, "MAX_BODY_SIZE": 5000}
    stream = Counted(endless=True)
    response = post_chunked(stream, signed(b""))
    assert (response.status_code, response.json()["error"]) == (413, "payload_too_large")
    assert stream.read_bytes == 5001


def test_chunked_body_over_djangos_upload_limit_is_413(hooks: Webhooks, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 500
    stream = Counted(endless=True)
    assert post_chunked(stream, signed(b"")).status_code == 413
    assert stream.read_bytes == 501


def test_chunked_body_that_breaks_mid_stream_is_400_not_500(hooks: Webhooks) -> None:
    body, headers = delivery()
    response = post_chunked(Counted(body[:50], error=True), headers)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_payload")


def test_no_length_and_not_chunked_is_an_empty_body_never_read(hooks: Webhooks) -> None:
    stream = Counted(endless=True)
    environ = {"CONTENT_LENGTH": "", "wsgi.input": stream}
    response = Client().post(
        "/hooks/gptimg", b"", "application/json", headers=signed(b""), **environ
    )
    assert response.status_code == 400  # the (signed) empty body is not JSON
    assert stream.read_bytes == 0


def test_get_is_405_and_a_wrong_signature_401(hooks: Webhooks) -> None:
    client = Client()
    response = client.get("/hooks/gptimg")
    assert (response.status_code, response["Allow"]) == (405, "POST")
    body, headers = delivery()
    headers["X-Gptimg-Signature"] = "0" * 64
    assert post(client, body, headers).status_code == 401


def test_misconfigured_receiver_answers_503_so_the_provider_retries(settings: Any) -> None:
    settings.GPTIMG_WEBHOOKS = {"SECRET": "  "}
    body, headers = delivery()
    response = post(Client(), body, headers)
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"


def test_view_is_sync_without_an_event_loop_and_async_inside_one() -> None:
    assert not iscoroutinefunction(webhook_view)

    async def inside() -> bool:
        return iscoroutinefunction(webhook_view)

    assert asyncio.run(inside())


def test_under_asgi_async_handlers_run_on_the_request_event_loop(
    hooks: Webhooks, settings: Any
) -> None:
    # A non-transactional store: Django's own transactions would need a worker thread.
    settings.GPTIMG_WEBHOOKS = {**settings.GPTIMG_WEBHOOKS, "STORE": "memory://"}
    loops: list[object] = []

    async def main() -> int:
        from gptimg_webhooks.django import receiver

        @receiver().on("generation.succeeded")
        async def handler(event: Event, delivery: Delivery) -> None:
            loops.append(asyncio.get_running_loop())

        body, headers = delivery_pair
        response = await AsyncClient().post(
            "/hooks/gptimg", body, content_type="application/json", headers=headers
        )
        loops.append(asyncio.get_running_loop())
        return response.status_code

    delivery_pair = delivery()
    assert asyncio.run(main()) == 200
    handler_loop, request_loop = loops
    assert handler_loop is request_loop
