"""pytest plugin (registered through ``pytest11``): deliver signed events to your own app.

Installing the package is enough. Tell the plugin where your app is by overriding one
fixture in your ``conftest.py``, then write tests::

    # conftest.py
    @pytest.fixture
    def gptimg_app():
        return app            # ASGI (Starlette, FastAPI), Flask, any WSGI app, or a URL

    # test_hooks.py
    def test_new_image_is_saved(gptimg, gptimg_events):
        result = gptimg.deliver(gptimg_events.succeeded(generation_id="gen_cat"))
        assert result.processed
        assert gptimg.retry(result).duplicate

With pytest-django and no ``gptimg_app`` override, deliveries go through
``django.test.Client`` to the configured project. ``--gptimg-url URL`` (or the
``gptimg_url`` ini option) sends them to a live server instead.

Fixtures: ``gptimg`` (a :class:`~gptimg_webhooks.testing.WebhookClient`),
``gptimg_events`` (an :class:`~gptimg_webhooks.testing.EventFactory`),
``gptimg_simulator`` (a :class:`~gptimg_webhooks.testing.Simulator` on a fake clock),
and the settings ``gptimg_app``, ``gptimg_secret``, ``gptimg_path``,
``gptimg_isolate_ledger``.

Each test gets a fresh ledger: the receivers the plugin finds in the app under test
have their store swapped for a new ``memory://`` one for the test, and put back after,
so a SQLite file left by the last run cannot make a delivery a ``duplicate``. A
transactional store (PostgreSQL, the Django ORM) is left in place: handlers write
through its transaction, and the database's own test isolation applies. Override
``gptimg_isolate_ledger`` to return False to keep the app's own ledger.

This module imports nothing but pytest at import time, so it costs nothing in test
runs that do not use it, and it works without Flask or Django installed.
"""

from __future__ import annotations

import os
import sys
import types
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gptimg_webhooks._core.receiver import Webhooks
    from gptimg_webhooks.testing.client import WebhookClient
    from gptimg_webhooks.testing.factories import EventFactory
    from gptimg_webhooks.testing.simulator import Simulator

SECRET_ENV = "GPTIMG_WEBHOOK_SECRET"  # noqa: S105 - a variable name


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gptimg_webhooks", "gptimg_webhooks deliveries")
    group.addoption(
        "--gptimg-url",
        default=None,
        help="send the gptimg fixture's deliveries to this live server instead of in-process",
    )
    parser.addini("gptimg_url", "live server base URL for the gptimg fixture", default=None)
    parser.addini("gptimg_path", "webhook path of the app (default /hooks/gptimg)", default=None)


def _django_configured() -> bool:
    if "django" not in sys.modules and not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return False
    try:
        from django.conf import settings  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return False
    return bool(settings.configured)


@pytest.fixture
def gptimg_app() -> Any:
    """Return the app deliveries go to; override it in your conftest.py.

    An ASGI app, a Flask app, any WSGI app, ``"django"`` (the configured project through
    ``django.test.Client``) or a base URL (``live_server.url`` with pytest-django).
    Default: ``"django"`` when Django settings are configured.
    """
    if _django_configured():
        return "django"
    pytest.fail(
        "gptimg: tell the plugin which app to deliver to: define a `gptimg_app` fixture "
        "in conftest.py returning your ASGI/Flask/WSGI app (or a URL), or pass --gptimg-url",
        pytrace=False,
    )


def _configured_secret(target: Any) -> str | None:
    """Return the secret the app itself is configured with, where the plugin can see it."""
    value: Any = None
    if target == "django":
        from django.conf import settings  # type: ignore[import-untyped,unused-ignore]

        value = getattr(settings, "GPTIMG_WEBHOOKS", {}).get("SECRET")
    elif hasattr(target, "test_client") and hasattr(target, "config"):
        value = target.config.get("GPTIMG_WEBHOOK_SECRET")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value.split(",")[0].strip() if isinstance(value, str) else None


@pytest.fixture
def gptimg_secret(request: pytest.FixtureRequest) -> str:
    """Return the secret deliveries are signed with.

    Default: the one your app is configured with when the plugin can read it (Flask's
    ``app.config["GPTIMG_WEBHOOK_SECRET"]``, Django's ``GPTIMG_WEBHOOKS["SECRET"]``),
    else ``GPTIMG_WEBHOOK_SECRET``. With several (rotation), the first one signs.
    """
    value = _configured_secret(_target(request))
    if not value:
        value = os.environ.get(SECRET_ENV, "").split(",")[0].strip()
    if not value:
        pytest.fail(
            f"gptimg: no signing secret: set {SECRET_ENV} for the test run, or define a "
            "`gptimg_secret` fixture returning the secret your app is configured with",
            pytrace=False,
        )
    return value


@pytest.fixture
def gptimg_path(request: pytest.FixtureRequest) -> str:
    """Return the webhook path of your app (ini ``gptimg_path``, default ``/hooks/gptimg``)."""
    value = request.config.getini("gptimg_path")
    return str(value) if value else "/hooks/gptimg"


def _target(request: pytest.FixtureRequest) -> Any:
    url = request.config.getoption("--gptimg-url") or request.config.getini("gptimg_url")
    return url or request.getfixturevalue("gptimg_app")


@pytest.fixture
def gptimg_events() -> EventFactory:
    """Return an event factory: ``succeeded()``, ``failed()``, ``unknown()``."""
    from gptimg_webhooks.testing.factories import EventFactory

    return EventFactory()


@pytest.fixture
def gptimg_isolate_ledger() -> bool:
    """Return whether each test gets a fresh ``memory://`` ledger; override to opt out."""
    return True


#: How far and how wide the search for receivers inside an app goes.
_MAX_DEPTH = 7
_MAX_NODES = 20_000
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), type, types.ModuleType)


def _receivers(target: Any) -> list[Webhooks]:
    """Find the receivers an app holds: its middleware, routes, extensions, view closures.

    A bounded walk over plain attributes, containers and closures (never a property or
    a module), so it finds a receiver wherever the adapters keep it.
    """
    from gptimg_webhooks._core.receiver import Webhooks

    if target == "django":
        try:
            from gptimg_webhooks.django.conf import receiver

            return [receiver()]
        except Exception:  # a broken configuration shows in the deliveries' answers
            return []
    found: dict[int, Webhooks] = {}
    seen: set[int] = set()
    queue: deque[tuple[Any, int]] = deque([(target, 0)])
    while queue and len(seen) < _MAX_NODES:
        obj, depth = queue.popleft()
        if id(obj) in seen or isinstance(obj, _LEAVES):
            continue
        seen.add(id(obj))
        if isinstance(obj, Webhooks):
            found[id(obj)] = obj
            continue
        if depth >= _MAX_DEPTH:
            continue
        children: list[Any] = []
        if isinstance(obj, dict):
            children = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            children = list(obj)
        elif isinstance(obj, (types.FunctionType, types.MethodType)):
            func = getattr(obj, "__func__", obj)
            children = [c.cell_contents for c in (func.__closure__ or ()) if _filled(c)]
            children += [getattr(obj, "__self__", None), getattr(func, "__wrapped__", None)]
        else:
            children = list(getattr(obj, "__dict__", {}).values())
            for slot in getattr(type(obj), "__slots__", ()):
                children.append(getattr(obj, slot, None))
        queue.extend((child, depth + 1) for child in children)
    return list(found.values())


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


@pytest.fixture
def _gptimg_fresh_ledger(
    request: pytest.FixtureRequest, gptimg_isolate_ledger: bool
) -> Iterator[None]:
    """Swap the app's non-transactional ledgers for fresh memory ones for this test."""
    target = _target(request)
    if not gptimg_isolate_ledger or (isinstance(target, str) and target != "django"):
        yield  # a live server's ledger is out of reach
        return
    from gptimg_webhooks.stores.memory import MemoryStore

    swapped = [(hooks, hooks.store) for hooks in _receivers(target)]
    swapped = [(hooks, store) for hooks, store in swapped if not store.transactional]
    for hooks, _ in swapped:
        hooks.store = MemoryStore()
    try:
        yield
    finally:
        for hooks, store in swapped:
            fresh, hooks.store = hooks.store, store
            fresh.close()


@pytest.fixture
def gptimg(
    request: pytest.FixtureRequest, gptimg_secret: str, gptimg_path: str, _gptimg_fresh_ledger: None
) -> Iterator[WebhookClient]:
    """Return a client that signs and posts deliveries to your app; see ``WebhookClient``."""
    from gptimg_webhooks.testing.client import WebhookClient

    with WebhookClient(_target(request), gptimg_secret, path=gptimg_path) as client:
        yield client


@pytest.fixture
def gptimg_simulator(
    request: pytest.FixtureRequest, gptimg_secret: str, gptimg_path: str, _gptimg_fresh_ledger: None
) -> Iterator[Simulator]:
    """Return the provider's retry policy aimed at your app, on a fake clock (no waiting)."""
    from gptimg_webhooks.testing.simulator import FakeClock, Simulator

    with Simulator(
        _target(request), gptimg_secret, path=gptimg_path, clock=FakeClock()
    ) as simulator:
        yield simulator
