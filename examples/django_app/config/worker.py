"""The task engine's app, Django set up first, for its worker (examples/README.md)::

celery -A config.worker:app worker                  # GPTIMG_EXAMPLE_ENGINE=celery
procrastinate --app config.worker.app worker        # GPTIMG_EXAMPLE_ENGINE=procrastinate
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from config.settings import engine_app as app  # noqa: E402

__all__ = ["app"]
