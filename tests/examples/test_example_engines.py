"""Each example runs in deferred mode on each task engine, with the worker command its README
gives: a delivery is answered 202 and then shows up in the gallery exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gptimg_webhooks.testing import events, signed
from tests.support.servers import BIN, ROOT, free_port, gunicorn_argv, running, uvicorn_argv
from tests.support.services import ensure_postgres, ensure_redis, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.redis]

SECRET = "whsec_engine_example_tests"
DJANGO = ROOT / "examples" / "django_app"
MODULE = {"starlette": "examples.starlette_app.app", "flask": "examples.flask_app.app"}


def _worker_argv(example: str, engine: str) -> tuple[list[str], Path]:
    if engine == "celery":
        app = "config.worker:app" if example == "django" else f"{MODULE[example]}:engine_app"
        argv = [str(BIN / "celery"), "-A", app, "worker", "--pool", "solo", "--without-mingle"]
        argv += ["--without-gossip", "--without-heartbeat", "--loglevel", "INFO"]
    elif engine == "procrastinate":
        app = "config.worker.app" if example == "django" else f"{MODULE[example]}.engine_app"
        argv = [str(BIN / "procrastinate"), "--app", app, "worker"]
    else:
        argv = [sys.executable, "-m", "django", "db_worker", "--interval", "0.1"]
    return argv, DJANGO if example == "django" else ROOT


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(params=["celery", "django-tasks", "procrastinate"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    try:
        __import__({"django-tasks": "django_tasks_db"}.get(name, name))
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc})")
    return name


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own for procrastinate's schema, dropped afterwards."""
    dsn = ensure_postgres()
    import psycopg

    name = f"gptimg_t_example_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("example", ["starlette", "flask", "django"])
def test_example_runs_deferred_on_the_engine(
    example: str, engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis_url = ensure_redis()
    prefix = f"gptimg:t-example-{uuid.uuid4().hex[:8]}:"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    env |= {
        "GPTIMG_WEBHOOK_SECRET": SECRET,
        "GPTIMG_WEBHOOK_STORE": f"{redis_url}?prefix={prefix}",
        "GPTIMG_EXAMPLE_DATA_DIR": str(tmp_path),
        "GPTIMG_EXAMPLE_ENGINE": engine,
        "GPTIMG_EXAMPLE_BROKER": redis_url,
        "PYTHONPATH": str(ROOT),
    }
    if example == "django":
        env["DJANGO_SETTINGS_MODULE"] = "config.settings"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(DJANGO), str(ROOT)]
        )  # as the README's PYTHONPATH=.
        _run([sys.executable, "manage.py", "migrate", "-v", "0"], DJANGO, env)
    elif engine == "django-tasks":
        env["DJANGO_SETTINGS_MODULE"] = "examples.tasks_settings"
        _run([sys.executable, "-m", "django", "migrate", "-v", "0"], ROOT, env)
    if engine == "celery":
        # Celery's own keys, apart from everyone else's on this Redis.
        env["GPTIMG_EXAMPLE_BROKER"] = redis_url.rsplit("/", 1)[0] + "/0"
    if engine == "procrastinate":
        env["GPTIMG_EXAMPLE_PROCRASTINATE_DSN"] = request.getfixturevalue("database")
        app = "config.worker.app" if example == "django" else f"{MODULE[example]}.engine_app"
        cwd = DJANGO if example == "django" else ROOT
        _run([str(BIN / "procrastinate"), "--app", app, "schema", "--apply"], cwd, env)
    port = free_port()
    if example == "starlette":
        argv = uvicorn_argv("examples.starlette_app.app:app", port)
    elif example == "flask":
        argv = gunicorn_argv("examples.flask_app.app:app", port, workers=2)
    else:
        argv = [*gunicorn_argv("config.wsgi:application", port, workers=2), "--chdir", str(DJANGO)]
    worker_argv, cwd = _worker_argv(example, engine)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        worker_argv,
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with running(argv, port=port, env=env) as base:
            delivery = signed(events.succeeded(), SECRET)
            answer = httpx.post(
                base + "/hooks/gptimg", content=delivery.body, headers=delivery.headers
            )
            assert answer.status_code == 202 and answer.json()["status"] == "queued"
            generation = delivery.sample.generation_id  # type: ignore[union-attr]
            deadline = time.monotonic() + 60
            rows: list[dict[str, object]] = []
            while time.monotonic() < deadline:
                rows = httpx.get(base + "/generations").json()
                if rows:
                    break
                time.sleep(0.2)
            time.sleep(0.5)
            rows = httpx.get(base + "/generations").json()
            log.flush()
            assert [r["generationId"] for r in rows] == [generation], (
                tmp_path / "worker.log"
            ).read_text(errors="replace")[-3000:]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        client = redis.Redis.from_url(redis_url)
        for name in client.scan_iter(match=f"{prefix}*"):
            client.delete(name)
