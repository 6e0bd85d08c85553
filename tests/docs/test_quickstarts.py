"""Every quickstart page runs as printed: its files, served by a real server, take a delivery.

The code blocks to extract carry a ``title="<file name>"`` attribute (Material shows it as the
file's name); they are written into a temporary directory, served by the command the page
prints, and sent one signed ``generation.succeeded`` delivery, which must be processed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from gptimg_webhooks.testing import events, random_secret, signed
from tests.support.servers import BIN, free_port, gunicorn_argv, running, uvicorn_argv

PAGES = Path(__file__).resolve().parents[2] / "docs" / "quickstart"
FENCE = re.compile(r'^```\w*[^\n]*?\btitle="([^"]+)"[^\n]*\n(.*?)^```\s*$', re.M | re.S)
PATH = "/hooks/gptimg"


def extract(page: Path, into: Path) -> list[str]:
    """Write the page's titled code blocks under ``into``; return their file names."""
    names = []
    for name, code in FENCE.findall(page.read_text()):
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        # A package directory the page names (shop/webhooks.py) gets its empty __init__.py.
        if target.parent != into:
            (target.parent / "__init__.py").touch()
        target.write_text(code)
        names.append(name)
    return names


def deliver_one(base: str, secret: str) -> httpx.Response:
    """Send one signed generation.succeeded delivery."""
    delivery = signed(events.succeeded(), secret)
    return httpx.post(base + PATH, content=delivery.body, headers=delivery.headers, timeout=10)


def _serve_and_deliver(argv: list[str], port: int, folder: Path, env: dict[str, str]) -> None:
    # The webhook path answers 405 to a GET once the app is up: the readiness probe.
    with running(argv, port=port, cwd=folder, env=env, ready_path=PATH) as base:
        answer = deliver_one(base, env["GPTIMG_WEBHOOK_SECRET"])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ok": True, "status": "processed"}


def _page(name: str) -> str:
    return (PAGES / f"{name}.md").read_text()


def _env(**more: str) -> dict[str, str]:
    # The store falls back to the default SQLite file in the app's (temporary) directory.
    return {"GPTIMG_WEBHOOK_SECRET": random_secret(), "GPTIMG_WEBHOOK_STORE": "", **more}


def test_every_quickstart_page_has_files_to_run() -> None:
    pages = sorted(p.stem for p in PAGES.glob("*.md"))
    assert pages == ["django", "fastapi", "flask", "starlette"]
    for page in pages:
        assert FENCE.search(_page(page)), page


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_asgi_quickstart_runs_under_uvicorn(framework: str, tmp_path: Path) -> None:
    assert extract(PAGES / f"{framework}.md", tmp_path) == ["app.py"]
    assert "uvicorn app:app" in _page(framework)
    port = free_port()
    argv = [*uvicorn_argv("app:app", port, workers=2), "--app-dir", str(tmp_path)]
    _serve_and_deliver(argv, port, tmp_path, _env())


@pytest.mark.slow
def test_flask_quickstart_runs_under_gunicorn(tmp_path: Path) -> None:
    assert extract(PAGES / "flask.md", tmp_path) == ["app.py"]
    assert "gunicorn app:app" in _page("flask")
    port = free_port()
    argv = [*gunicorn_argv("app:app", port, workers=2), "--chdir", str(tmp_path)]
    _serve_and_deliver(argv, port, tmp_path, _env())


@pytest.mark.slow
def test_django_quickstart_migrates_and_runs_under_gunicorn(tmp_path: Path) -> None:
    files = extract(PAGES / "django.md", tmp_path)
    assert files == ["settings.py", "urls.py", "shop/webhooks.py"]
    app = "django.core.wsgi:get_wsgi_application()"
    assert f"gunicorn '{app}'" in _page("django")
    env = _env(DJANGO_SETTINGS_MODULE="settings", PYTHONPATH=str(tmp_path))
    for command in ("migrate", "check"):
        done = subprocess.run(
            [str(BIN / "django-admin"), command],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    argv = [*gunicorn_argv(app, port, workers=2), "--chdir", str(tmp_path)]
    _serve_and_deliver(argv, port, tmp_path, env)
