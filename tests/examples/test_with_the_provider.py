"""Every example against the local provider, end to end: submit through the API client,
receive the provider's signed webhook, show the images in the gallery."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gptimg_webhooks.cli._server import BackgroundServer
from gptimg_webhooks.client import Client
from gptimg_webhooks.testing import LocalProvider
from tests.support.servers import ROOT, free_port, gunicorn_argv, running, uvicorn_argv

pytestmark = pytest.mark.slow

DJANGO = ROOT / "examples" / "django_app"


def serve_argv(example: str, port: int, env: dict[str, str]) -> list[str]:
    if example == "starlette":
        return uvicorn_argv("examples.starlette_app.app:app", port)
    if example == "flask":
        return gunicorn_argv("examples.flask_app.app:app", port, workers=2)
    migrate = subprocess.run(
        [sys.executable, str(DJANGO / "manage.py"), "migrate", "--verbosity", "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    return [*gunicorn_argv("config.wsgi:application", port, workers=2), "--chdir", str(DJANGO)]


@pytest.mark.parametrize("example", ["starlette", "flask", "django"])
def test_example_shows_images_submitted_through_the_client(example: str, tmp_path: Path) -> None:
    provider = LocalProvider(time_scale=600)
    key = provider.add_key()
    port = free_port()
    with BackgroundServer(provider, "127.0.0.1", free_port()) as api_server:
        _, secret = provider.register_webhook(f"http://127.0.0.1:{port}/hooks/gptimg")
        env = {
            "GPTIMG_WEBHOOK_SECRET": secret,
            "GPTIMG_EXAMPLE_DATA_DIR": str(tmp_path / "data"),
        }
        if example == "django":
            env["DJANGO_SETTINGS_MODULE"] = "config.settings"
        else:
            env["GPTIMG_WEBHOOK_STORE"] = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        with running(serve_argv(example, port, env), port=port, env=env) as receiver:
            with Client(key, base_url=f"{api_server.url}/api/v1") as api:
                ok = api.generate("a lighthouse at dusk", n=2)
                bad = api.generate("a lighthouse [block]")
                provider.wait_idle(timeout=60)
                generation = api.get_generation(ok.generation_id)
            rows = httpx.get(f"{receiver}/generations", timeout=5).json()
            page = httpx.get(f"{receiver}/", timeout=5).text
            image = httpx.get(generation.outputs[0].png or "", timeout=5)
    by_id = {row["generationId"]: row for row in rows}
    assert set(by_id) == {ok.generation_id, bad.generation_id}
    assert by_id[ok.generation_id]["outputs"] == [o.model_dump() for o in generation.outputs]
    assert by_id[bad.generation_id]["status"] == "blocked"
    assert generation.outputs[0].webp is not None and generation.outputs[0].webp in page
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert [d.status for d in provider.deliveries] == [200, 200]
