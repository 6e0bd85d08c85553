"""A minimal Django project for the HTTP suite: the library's view or the twin on one path."""

from __future__ import annotations

import os

from django.urls import path

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "benchmarks.django_site"
USE_TZ = True
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, object] = {}
GPTIMG_WEBHOOKS = {
    "SECRET": "whsec_9f2c4e1ab7d84c0e93a1b5d6f7e8c2a1",
    "STORE": os.environ.get("BENCH_STORE", "memory://?max_records=1000000"),
}


def _urls() -> list[object]:
    if os.environ.get("BENCH_SIDE") == "twin":
        from .apps import django_twin_view

        return [path("hooks/gptimg", django_twin_view)]
    from gptimg_webhooks.django.conf import receiver
    from gptimg_webhooks.django.views import webhook_view

    from .apps import EVENT, _async_handler, _kind, _sync_handler

    receiver().on(EVENT)(_async_handler if _kind() == "async" else _sync_handler)
    return [path("hooks/gptimg", webhook_view)]


urlpatterns = _urls() if os.environ.get("DJANGO_SETTINGS_MODULE") == __name__ else []


def wsgi() -> object:
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def asgi() -> object:
    from django.core.asgi import get_asgi_application

    return get_asgi_application()
