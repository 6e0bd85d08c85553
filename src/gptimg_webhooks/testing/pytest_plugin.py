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
and the settings ``gptimg_app``, ``gptimg_secret``, ``gptimg_path``.

This module imports nothing but pytest at import time, so it costs nothing in test
runs that do not use it, and it works without Flask or Django installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
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
def gptimg(
    request: pytest.FixtureRequest, gptimg_secret: str, gptimg_path: str
) -> Iterator[WebhookClient]:
    """Return a client that signs and posts deliveries to your app; see ``WebhookClient``."""
    from gptimg_webhooks.testing.client import WebhookClient

    with WebhookClient(_target(request), gptimg_secret, path=gptimg_path) as client:
        yield client


@pytest.fixture
def gptimg_simulator(
    request: pytest.FixtureRequest, gptimg_secret: str, gptimg_path: str
) -> Iterator[Simulator]:
    """Return the provider's retry policy aimed at your app, on a fake clock (no waiting)."""
    from gptimg_webhooks.testing.simulator import FakeClock, Simulator

    with Simulator(
        _target(request), gptimg_secret, path=gptimg_path, clock=FakeClock()
    ) as simulator:
        yield simulator
