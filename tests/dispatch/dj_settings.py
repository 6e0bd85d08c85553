"""Django settings for the django-tasks engine test: the database backend on SQLite."""

from __future__ import annotations

import os

SECRET_KEY = "engine-test"
# gptimg_webhooks.django: its gptimg_webhooks_sweep command, run as cron would.
INSTALLED_APPS = ["django_tasks", "django_tasks_db", "gptimg_webhooks.django"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("GPTIMG_TEST_DJ_DB", ":memory:"),
        # No fsync per commit: this database is the test's queue, not a ledger to keep.
        "OPTIONS": {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
USE_TZ = True
