"""Settings of the Django gallery example: SQLite (WAL) under the data dir, the ORM ledger."""

from __future__ import annotations

import os
from pathlib import Path

from gptimg_webhooks.metrics import PrometheusObserver
from gptimg_webhooks.testing.gallery import example_options

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GPTIMG_EXAMPLE_DATA_DIR") or BASE_DIR / "data")
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
USE_TZ = True
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "gptimg_webhooks.django",
    "gallery",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# One SQLite file for the gallery and the ledger, so a handler's gallery row and the
# ledger's done mark commit together. WAL lets readers and the writer overlap across
# worker processes. SQLite has one writer at a time: a handler's transaction holds the
# write lock from its first write to the commit, so write late and keep it short (the
# handler below sleeps before it writes). init_command needs Django 5.1+.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "django.sqlite3",
        "ATOMIC_REQUESTS": True,  # the webhook view is exempt; the gallery views are not
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "timeout": 20,
        },
    }
}

GPTIMG_WEBHOOKS = {
    "SECRET": os.environ.get("GPTIMG_WEBHOOK_SECRET"),
    "STORE": os.environ.get("GPTIMG_WEBHOOK_STORE") or "django://",
    # Prometheus counters (served at /metrics, see config/urls.py).
    "OBSERVERS": [PrometheusObserver()],
    # Other options as JSON in GPTIMG_WEBHOOK_OPTIONS, e.g. {"max_event_age": 3600}, for tests.
    **{key.upper(): value for key, value in example_options().items()},
}
# Deferred on a task engine (GPTIMG_EXAMPLE_ENGINE; examples/README.md): MODE, DISPATCHER.
if os.environ.get("GPTIMG_EXAMPLE_ENGINE"):
    if os.environ["GPTIMG_EXAMPLE_ENGINE"] == "django-tasks":
        INSTALLED_APPS += ["django_tasks", "django_tasks_db"]
        TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    import sys

    sys.path.append(str(BASE_DIR.parent.parent))  # the examples' shared examples/ops.py
    from examples.ops import engine

    _options, engine_app = engine("gptimg_webhooks.django.conf:receiver")
    GPTIMG_WEBHOOKS |= {key.upper(): value for key, value in _options.items()}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"gptimg_webhooks": {"handlers": ["console"], "level": "WARNING"}},
}
