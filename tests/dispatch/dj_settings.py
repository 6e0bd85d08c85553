"""Django settings for the django-tasks engine test: the database backend on SQLite."""

from __future__ import annotations

import os

SECRET_KEY = "engine-test"
INSTALLED_APPS = ["django_tasks", "django_tasks_db"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("GPTIMG_TEST_DJ_DB", ":memory:"),
        "OPTIONS": {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"},
    }
}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
USE_TZ = True
