"""Start the four examples under their real servers, configured for the hostile suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.servers import ROOT, Server, free_port, gunicorn_argv, started, uvicorn_argv

DJANGO = ROOT / "examples" / "django_app"
#: Every adapter the suites run through: the examples as their READMEs start them.
ADAPTERS = ("starlette-uvicorn", "flask-gunicorn", "django-wsgi-gunicorn", "django-asgi-uvicorn")


def argv_for(adapter: str, port: int, workers: int) -> list[str]:
    """Return the command line that serves ``adapter`` on ``port``."""
    if adapter == "starlette-uvicorn":
        return uvicorn_argv("examples.starlette_app.app:app", port, workers=workers)
    if adapter == "flask-gunicorn":
        return gunicorn_argv("examples.flask_app.app:app", port, workers=workers)
    if adapter == "django-wsgi-gunicorn":
        argv = gunicorn_argv("config.wsgi:application", port, workers=workers)
        return [*argv, "--chdir", str(DJANGO)]
    if adapter == "django-asgi-uvicorn":
        argv = uvicorn_argv("config.asgi:application", port, workers=workers)
        return [*argv, "--app-dir", str(DJANGO)]
    raise ValueError(f"unknown adapter {adapter!r}")


def example_env(
    data_dir: Path, secrets: list[str], store: str, options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Return the environment the examples read: secrets, ledger, data dir, options."""
    return {
        "GPTIMG_WEBHOOK_SECRET": ",".join(secrets),
        "GPTIMG_WEBHOOK_STORE": store,
        "GPTIMG_EXAMPLE_DATA_DIR": str(data_dir),
        "GPTIMG_WEBHOOK_OPTIONS": json.dumps(dict(options or {})),
        # pytest-django exported the test settings; the example has its own.
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }


def migrate(env: Mapping[str, str]) -> None:
    """Create the Django example's tables, as its README says."""
    done = subprocess.run(
        [sys.executable, str(DJANGO / "manage.py"), "migrate", "--verbosity", "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@contextmanager
def serve(
    adapter: str,
    data_dir: Path,
    secrets: list[str],
    store: str,
    *,
    options: Mapping[str, Any] | None = None,
    workers: int = 2,
    log_path: Path | None = None,
) -> Iterator[Server]:
    """Serve one example on 127.0.0.1 until the block ends (its output to ``log_path``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = example_env(data_dir, secrets, store, options)
    if adapter.startswith("django"):
        migrate(env)
    port = free_port()
    argv = argv_for(adapter, port, workers)
    with started(argv, port=port, env=env, log_path=log_path) as server:
        yield server
