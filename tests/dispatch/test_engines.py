"""Deferred processing on real task engines: one suite, run against each engine.

Each engine runs as it does in production: the receiver under uvicorn (deferred mode,
the engine's dispatcher), and the engine's own worker process (``celery worker``,
``procrastinate worker``, ``django-admin db_worker``). The ledger is Redis; handlers
push each generation id to a Redis list, so any effect that ran twice shows twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gptimg_webhooks.stores import Store, open_store
from gptimg_webhooks.testing import events, random_secret, signed
from gptimg_webhooks.testing.deliveries import SignedDelivery
from tests.support.servers import BIN, ROOT, free_port, running, uvicorn_argv
from tests.support.services import ensure_postgres, ensure_redis, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ENGINES = ["celery", "django_tasks", pytest.param("procrastinate", marks=pytest.mark.postgres)]
#: Deliveries per engine: what CI runs, and the slow variant's (GPTIMG_ENGINE_LOAD=2000).
LOAD = int(os.environ.get("GPTIMG_ENGINE_LOAD", "300"))
#: Seconds to wait for the effects: the database backend's single db_worker on SQLite runs
#: about 15 tasks a second here, so the slow variant needs longer.
WAIT = 90.0 + LOAD * 0.1


def _module(name: str) -> None:
    try:
        __import__(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc}): pip install -e '.[dev]'")


class Stack:
    """The receiver and the engine's worker, as real processes, for one engine."""

    def __init__(self, engine: str, redis_url: str, stack: ExitStack) -> None:
        self.engine = engine
        self.prefix = f"gptimg:t-engine-{engine}-{uuid.uuid4().hex[:8]}:"
        self.secret = random_secret()
        self.redis = redis.Redis.from_url(redis_url)
        self.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        self.env = {
            "GPTIMG_ENGINE": engine,
            "GPTIMG_WEBHOOK_SECRET": self.secret,
            "GPTIMG_TEST_REDIS": redis_url,
            "GPTIMG_TEST_PREFIX": self.prefix,
            "PYTHONPATH": str(ROOT),
        }
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = self.tmp / "worker.log"
        self.restarts = 0
        self._ledger: Store | None = None
        stack.callback(self._cleanup)

    # Engine set-up ----------------------------------------------------------------

    def prepare(self, stack: ExitStack) -> None:
        if self.engine == "procrastinate":
            dsn = ensure_postgres()
            import psycopg

            database = f"gptimg_t_engine_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            stack.callback(self._drop_database, dsn, database)
            self.env["GPTIMG_TEST_PG_DSN"] = dsn.rsplit("/", 1)[0] + "/" + database
            # The PostgreSQL ledger, in procrastinate's database: a job and its record
            # commit in one transaction.
            self.env["GPTIMG_TEST_LEDGER"] = self.env["GPTIMG_TEST_PG_DSN"] + "?table=t_ledger"
            self._run([str(BIN / "procrastinate"), "--app", self.app_path, "schema", "--apply"])
        elif self.engine == "django_tasks":
            self.env["DJANGO_SETTINGS_MODULE"] = "tests.dispatch.dj_settings"
            self.env["GPTIMG_TEST_DJ_DB"] = str(self.tmp / "tasks.sqlite3")
            self._run([sys.executable, "-m", "django", "migrate", "-v", "0"])

    @staticmethod
    def _drop_database(dsn: str, database: str) -> None:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    @property
    def app_path(self) -> str:
        return "tests.dispatch.engine_app.engine_app"

    def environ(self, **extra: str) -> dict[str, str]:
        # pytest-django's settings module would make Celery load Django: engines get ours.
        inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        return {**inherited, **self.env, **extra}

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, cwd=ROOT, env=self.environ(), capture_output=True, timeout=120)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

    def worker_argv(self) -> list[str]:
        if self.engine == "celery":
            return [
                str(BIN / "celery"),
                "--app",
                self.app_path,
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--queues",
                f"{self.prefix}q",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ]
        if self.engine == "procrastinate":
            return [
                str(BIN / "procrastinate"),
                "--app",
                self.app_path,
                "worker",
                "--concurrency",
                "4",
                "--wait",
            ]
        return [
            sys.executable,
            "-m",
            "django",
            "db_worker",
            "--interval",
            "0.05",
            "--no-startup-delay",
        ]

    def start_worker(self) -> None:
        log = self.worker_log.open("ab")
        self.worker = subprocess.Popen(
            self.worker_argv(),
            cwd=ROOT,
            env=self.environ(GPTIMG_TEST_ROLE="worker"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def ensure_worker(self) -> None:
        """Restart the worker if a SIGKILL took the whole process (single-process engines)."""
        if self.worker is not None and self.worker.poll() is not None:
            self.restarts += 1
            self.start_worker()

    def _cleanup(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        names = list(self.redis.scan_iter(match=f"{self.prefix}*", count=1000))
        for start in range(0, len(names), 500):
            self.redis.delete(*names[start : start + 500])
        self.redis.close()

    # Probes ----------------------------------------------------------------------------

    def effects(self) -> Counter[str]:
        raw = self.redis.lrange(f"{self.prefix}effects", 0, -1)
        return Counter(value.decode() for value in raw)

    @property
    def ledger(self) -> Store:
        if self._ledger is None:
            url = self.env.get("GPTIMG_TEST_LEDGER") or f"{self.env['GPTIMG_TEST_REDIS']}"
            if "GPTIMG_TEST_LEDGER" not in self.env:
                url += f"?prefix={self.prefix}"
            self._ledger = open_store(url)
        return self._ledger

    def state(self, key: str) -> str | None:
        record = self.ledger.get(key)
        return record.state.value if record is not None else None

    def attempts(self, key: str) -> int:
        record = self.ledger.get(key)
        return record.attempts if record is not None else 0

    def wait_for(self, check: Any, what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ensure_worker()
            if check():
                return
            time.sleep(0.1)
        tail = self.worker_log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{self.engine}: timed out waiting for {what}\n{tail}")


@pytest.fixture(scope="module", params=ENGINES)
def stack(request: pytest.FixtureRequest) -> Iterator[tuple[Stack, str]]:
    engine: str = request.param
    _module({"celery": "celery", "procrastinate": "procrastinate"}.get(engine, "django_tasks_db"))
    redis_url = ensure_redis()
    with ExitStack() as exits:
        found = Stack(engine, redis_url, exits)
        found.prepare(exits)
        port = free_port()
        env = {**found.env, "GPTIMG_TEST_ROLE": "server"}
        base = exits.enter_context(
            running(uvicorn_argv("tests.dispatch.engine_app:app", port), port=port, env=env)
        )
        found.start_worker()
        yield found, base


def _key(delivery: SignedDelivery) -> str:
    import hashlib

    return hashlib.sha256(delivery.body).hexdigest()


def _post(client: httpx.Client, base: str, delivery: SignedDelivery) -> httpx.Response:
    return client.post(base + "/hooks/gptimg", content=delivery.body, headers=delivery.headers)


def test_deliveries_duplicates_and_forged_replays_take_effect_exactly_once(
    stack: tuple[Stack, str],
) -> None:
    engine, base = stack
    originals = [signed(events.succeeded(), engine.secret) for _ in range(LOAD)]
    # A tenth are retried (same id) and a tenth replayed under a forged fresh id.
    copies = [d for d in originals[::10]] + [d.forged() for d in originals[5::10]]
    answers: Counter[str] = Counter()
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
        for response in pool.map(lambda d: _post(client, base, d), originals):
            assert response.status_code == 202, response.text
            answers[response.json()["status"]] += 1
        for response in pool.map(lambda d: _post(client, base, d), copies):
            assert response.status_code in (200, 202), response.text
            answers[response.json()["status"]] += 1
    assert answers["queued"] >= LOAD
    wanted = Counter(d.sample.generation_id for d in originals if d.sample is not None)
    engine.wait_for(lambda: len(engine.effects()) >= LOAD, f"{LOAD} effects")
    time.sleep(1.0)  # room for any wrong second run to show up
    assert engine.effects() == wanted
    assert {engine.state(_key(d)) for d in originals} == {"done"}


def test_a_task_process_sigkilled_mid_handler_is_completed_once_later(
    stack: tuple[Stack, str],
) -> None:
    engine, base = stack
    generation = f"kill_{uuid.uuid4().hex[:10]}"
    delivery = signed(events.succeeded(generation_id=generation), engine.secret)
    restarts = engine.restarts
    assert httpx.post(
        base + "/hooks/gptimg", content=delivery.body, headers=delivery.headers
    ).json() == {"ok": True, "status": "queued"}
    key = _key(delivery)
    engine.wait_for(lambda: engine.state(key) == "done", "the killed record to be done")
    time.sleep(1.0)
    assert engine.effects()[generation] == 1
    # The first run died in its handler: the second one completed it.
    assert engine.attempts(key) == 2
    if engine.engine != "celery":  # prefork replaces a child; the others die whole
        assert engine.restarts > restarts


def test_a_failing_handler_is_retried_then_kept_dead_and_replayable(
    stack: tuple[Stack, str],
) -> None:
    engine, base = stack
    generation = f"fail_{uuid.uuid4().hex[:10]}"
    delivery = signed(events.succeeded(generation_id=generation), engine.secret)
    assert httpx.post(base + "/hooks/gptimg", content=delivery.body, headers=delivery.headers)
    key = _key(delivery)
    engine.wait_for(lambda: engine.state(key) == "dead", "the failing record to be dead")
    assert engine.attempts(key) == 3  # the receiver's Backoff(max_attempts=3)
    assert engine.effects()[generation] == 0
    # A duplicate of a dead delivery does not run it again by itself.
    again = httpx.post(base + "/hooks/gptimg", content=delivery.body, headers=delivery.headers)
    assert again.json()["status"] == "dead"

    engine.redis.set(f"{engine.prefix}heal", "1")
    assert httpx.post(f"{base}/replay/{key}").json() == {"replayed": True}
    engine.wait_for(lambda: engine.state(key) == "done", "the replayed record to be done")
    time.sleep(0.5)
    assert engine.effects()[generation] == 1
