"""examples/django_app as users run it: gunicorn -w 4 (WSGI) and uvicorn --workers 4 (ASGI)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.contract import check_contract, duplicate_storm
from tests.support.framing import assert_quiet_log, check_framing
from tests.support.servers import ROOT, free_port, gunicorn_argv, running, uvicorn_argv

EXAMPLE = ROOT / "examples" / "django_app"
SECRET = "whsec_django_example_tests"


def example_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "GPTIMG_WEBHOOK_SECRET": SECRET,
        "GPTIMG_EXAMPLE_DATA_DIR": str(data_dir),
        # pytest-django exported the test settings; the example has its own.
        "DJANGO_SETTINGS_MODULE": "config.settings",
        **extra,
    }


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def migrated(tmp_path: Path) -> dict[str, str]:
    """A fresh data dir, migrated as the README says; return the server environment."""
    env = example_env(tmp_path)
    done = manage("migrate", "--verbosity", "0", env=env)
    assert done.returncode == 0, done.stderr
    return env


def test_example_check_fails_on_a_blank_secret(tmp_path: Path) -> None:
    result = manage("check", env=example_env(tmp_path, GPTIMG_WEBHOOK_SECRET=" "))
    assert result.returncode == 1
    assert 'GPTIMG_WEBHOOKS["SECRET"] is blank' in result.stderr


def test_example_handlers_are_autodiscovered_from_its_webhooks_module(tmp_path: Path) -> None:
    code = (
        "import django; django.setup(); from gptimg_webhooks import shared_registry; "
        "print([h.func.__module__ for h in shared_registry.lookup('generation.succeeded')[0]])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=EXAMPLE,
        env={**os.environ, **example_env(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "['gallery.webhooks']", result.stderr


@pytest.fixture(params=["wsgi", "asgi"])
def server(request: pytest.FixtureRequest, migrated: dict[str, str]) -> Iterator[str]:
    port = free_port()
    if request.param == "wsgi":
        argv = [*gunicorn_argv("config.wsgi:application", port, workers=4), "--chdir", str(EXAMPLE)]
    else:
        argv = [
            *uvicorn_argv("config.asgi:application", port, workers=4),
            "--app-dir",
            str(EXAMPLE),
        ]
    with running(argv, port=port, env=migrated) as base:
        yield base


@pytest.mark.slow
def test_example_holds_the_http_contract_and_survives_the_duplicate_storm(server: str) -> None:
    cases = check_contract(server, SECRET)
    assert len(cases) >= 20
    page = httpx.get(server + "/", timeout=10)
    assert page.status_code == 200
    assert '<figure class="ok"' in page.text
    assert "<img src=" in page.text
    duplicate_storm(server, SECRET, n=500)


@pytest.fixture(params=["wsgi", "asgi"])
def logged_server(
    request: pytest.FixtureRequest, migrated: dict[str, str], tmp_path: Path
) -> Iterator[tuple[str, str, Path]]:
    """The example under gunicorn (WSGI) or uvicorn (ASGI), 2 workers, its log in a file."""
    port = free_port()
    log = tmp_path / "server.log"
    if request.param == "wsgi":
        argv = [*gunicorn_argv("config.wsgi:application", port, workers=2), "--chdir", str(EXAMPLE)]
    else:
        argv = [
            *uvicorn_argv("config.asgi:application", port, workers=2),
            "--app-dir",
            str(EXAMPLE),
        ]
    with running(argv, port=port, env=migrated, log_path=log) as base:
        yield base, request.param, log


@pytest.mark.slow
def test_example_reads_chunked_and_mismatched_bodies_right(
    logged_server: tuple[str, str, Path],
) -> None:
    base, kind, log = logged_server
    # Under ASGI, Django reads the whole body before any view runs.
    checked = check_framing(base, SECRET, reads_whole_body_first=kind == "asgi")
    assert len(checked) == 7
    assert_quiet_log(log)
