"""Django settings for the adapter's tests: SQLite by default, PostgreSQL as alias ``pg``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tests.support.services import POSTGRES_URL

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "tests.django.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "gptimg_webhooks.django",
    "tests.django.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
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

# A file, not Django's shared in-memory test database: worker threads open their own
# connections, as they would in production.
_TEST_DB = Path(tempfile.gettempdir()) / f"gptimg-django-tests-{os.getpid()}.sqlite3"
_pg = POSTGRES_URL.split("://", 1)[1]
_pg_user, _, _pg_rest = _pg.partition("@")
_pg_hostport, _, _pg_name = _pg_rest.partition("/")
_pg_host, _, _pg_port = _pg_hostport.partition(":")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_TEST_DB.with_name("unused-" + _TEST_DB.name)),
        "TEST": {"NAME": str(_TEST_DB)},
        "OPTIONS": {"timeout": 20},
    },
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _pg_name or "test",
        "USER": _pg_user or "postgres",
        "HOST": _pg_host or "127.0.0.1",
        "PORT": _pg_port or "5432",
        "TEST": {"NAME": f"gptimg_django_tests_{os.getpid()}"},
    },
}

GPTIMG_WEBHOOKS = {
    "SECRET": "whsec_django_tests_0123456789abcdef",
    "STORE": "django://",
}
