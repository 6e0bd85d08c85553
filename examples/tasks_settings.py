"""A minimal Django for the Starlette and Flask examples on django-tasks (database backend).

DJANGO_SETTINGS_MODULE=examples.tasks_settings python -m django migrate
DJANGO_SETTINGS_MODULE=examples.tasks_settings python -m django db_worker
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = "examples-only"
INSTALLED_APPS = ["django_tasks", "django_tasks_db"]
_DATA = Path(os.environ.get("GPTIMG_EXAMPLE_DATA_DIR") or Path(__file__).parent / "data")
_DATA.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _DATA / "tasks.sqlite3",
        "OPTIONS": {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"},
    }
}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
USE_TZ = True
