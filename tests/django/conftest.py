"""Fixtures for the Django adapter: a fresh receiver per test, signed deliveries, PostgreSQL."""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connections

from gptimg_webhooks import Webhooks, shared_registry, sign
from gptimg_webhooks.django import conf
from gptimg_webhooks.django.store import DjangoStore
from tests.support.contract import payload
from tests.support.services import ensure_postgres

SECRET = "whsec_django_tests_0123456789abcdef"


def signed(
    body: bytes, *, secret: str = SECRET, event: str = "generation.succeeded"
) -> dict[str, str]:
    """Return the headers the provider would send for ``body`` (the clients' ``headers=``)."""
    return {
        "X-Gptimg-Signature": sign(body, secret),
        "X-Gptimg-Delivery": str(uuid.uuid4()),
        "X-Gptimg-Event": event,
    }


def delivery(generation_id: str | None = None, **kw: Any) -> tuple[bytes, dict[str, str]]:
    body = payload(generation_id or f"gen_{uuid.uuid4().hex[:12]}", **kw)
    return body, signed(body)


def in_other_thread(alias: str, func: Any) -> Any:
    """Run ``func`` on a fresh connection of ``alias`` (outside any open transaction)."""

    def run() -> Any:
        try:
            return func()
        finally:
            connections[alias].close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=30)


@pytest.fixture
def hooks() -> Iterator[Webhooks]:
    """The receiver the view uses, built fresh from settings for this test."""
    conf.reset()
    yield conf.receiver()
    conf.reset()


def _ledger_keepers() -> set[int]:
    """Return the ids of live receivers on the ORM ledger whose keeper thread runs."""
    found = set()
    for thread in threading.enumerate():
        if thread.name != "gptimg-webhooks-keeper":
            continue
        keeper = thread._args[0]()  # type: ignore[attr-defined]  # its weakref
        hooks = keeper and keeper._hooks()
        if hooks is not None and isinstance(hooks.store, DjangoStore):
            found.add(id(hooks))
    return found


@pytest.fixture(autouse=True)
def no_ledger_receiver_outlives_its_test() -> Iterator[None]:
    """Fail a test that leaves a receiver on the ORM ledger running.

    Its keeper would sweep during later tests, where pytest-django blocks the database,
    and log the refusal into whatever those tests capture.
    """
    before = _ledger_keepers()
    yield
    if _ledger_keepers() - before:
        gc.collect()  # only when needed: a full collection per test costs seconds in all
        left = _ledger_keepers() - before
        assert not left, "close() the receivers this test built on the ORM ledger"


@pytest.fixture
def isolated_shared_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test use the module-level ``on`` without leaking handlers into other tests."""
    monkeypatch.setattr(shared_registry, "_by_name", {})
    monkeypatch.setattr(shared_registry, "_cache", {})
    monkeypatch.setattr(shared_registry, "_catch_all", ())
    monkeypatch.setattr(shared_registry, "_error_hooks", [])


@pytest.fixture(
    params=[
        "default",
        pytest.param(
            "pg",
            marks=[
                pytest.mark.postgres,
                pytest.mark.django_db(transaction=True, databases=["default", "pg"]),
            ],
        ),
    ]
)
def alias(request: pytest.FixtureRequest) -> str:
    """Run the test on SQLite, then on PostgreSQL."""
    if request.param == "pg":
        ensure_postgres()
    return str(request.param)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """Free the connections of finished worker threads before the test databases drop.

    Threads of asyncio's default executor each opened a connection (Django keeps one
    per thread); once they exit, only the garbage collector closes them.
    """
    yield
    gc.collect()


@pytest.fixture
def use_store(settings: Any, alias: str) -> str:
    """Point the receiver at the ORM ledger on ``alias``; return the alias."""
    settings.GPTIMG_WEBHOOKS = {**settings.GPTIMG_WEBHOOKS, "STORE": f"django://{alias}"}
    return alias
