"""Deferred processing on real task engines: one suite, run against each engine.

Each engine runs as it does in production: the receiver under uvicorn (deferred mode,
the engine's dispatcher), and the engine's own processes (``celery worker`` and ``celery
beat``; ``procrastinate worker``; two ``django-admin db_worker``). Handlers push each
generation id to a Redis list, so any effect that ran twice shows twice.

Lost pointers are re-dispatched by what production would run: Celery beat's periodic
sweep task, procrastinate's periodic sweep (both with the receivers' own sweep turned
off, so nothing else can), and for Django's task framework, whose worker has no
scheduler, the receiver's keeper plus ``manage.py gptimg_webhooks_sweep`` run as cron
would run it.

The engines of the selected tests, and every scenario on each, run at the same time: the
module starts them all, then each test waits for its own scenario. Their waits (leases,
backoff, polling, start-up) overlap, so the whole takes about as long as the slowest
engine, not the sum; what remains is mostly CPU, shared by all.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import pytest
import redis

from gptimg_webhooks.stores import Entry, State, Store, open_store
from gptimg_webhooks.testing import events, random_secret, signed
from gptimg_webhooks.testing.deliveries import SignedDelivery
from tests.support.servers import BIN, ROOT, free_port, running, uvicorn_argv
from tests.support.services import ensure_postgres, ensure_redis, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ENGINES = ["celery", "django_tasks", pytest.param("procrastinate", marks=pytest.mark.postgres)]
NAMES = ("celery", "django_tasks", "procrastinate")
#: Deliveries per engine (the issue's 2,000); GPTIMG_ENGINE_LOAD=300 for a quick run.
LOAD = int(os.environ.get("GPTIMG_ENGINE_LOAD", "2000"))
#: Requests in flight per engine while the load is sent.
SENDERS = 16
#: Seconds any one wait may take: the three engines share two cores here.
WAIT = 120.0 + LOAD * 0.05
#: Who re-dispatches lost pointers, per engine (see engine_app).
SWEEPER = {"celery": "beat", "procrastinate": "periodic", "django_tasks": "keeper"}
#: Seconds a pending record waits before a sweep re-dispatches it: longer than the
#: load's backlog mostly waits, so that the sweeps do not send most of it a second time.
#: (Django's cron command runs with no grace: it, not the keeper, finds the lost pointer.)
GRACE = 30.0


def _module(name: str) -> None:
    try:
        __import__(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc}): pip install -e '.[dev]'")


def _key(delivery: SignedDelivery) -> str:
    return hashlib.sha256(delivery.body).hexdigest()


def _generation(delivery: SignedDelivery) -> str:
    assert delivery.sample is not None
    return delivery.sample.generation_id


class Stack:
    """The receiver and the engine's processes, for one engine."""

    def __init__(self, engine: str, redis_url: str) -> None:
        self.engine = engine
        self.exits = ExitStack()
        self.prefix = f"gptimg:t-engine-{engine}-{uuid.uuid4().hex[:8]}:"
        self.secret = random_secret()
        self.redis = redis.Redis.from_url(redis_url)
        self.tmp = Path(self.exits.enter_context(tempfile.TemporaryDirectory()))
        self.env = {
            "GPTIMG_ENGINE": engine,
            "GPTIMG_WEBHOOK_SECRET": self.secret,
            "GPTIMG_TEST_REDIS": redis_url,
            "GPTIMG_TEST_PREFIX": self.prefix,
            "GPTIMG_TEST_SWEEPER": SWEEPER[engine],
            "GPTIMG_TEST_GRACE": str(GRACE),
            # This tree first, then whatever the caller had (its src/ in a checkout).
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.base = ""
        #: The engine's processes by name; the supervisor restarts any that dies.
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log = self.tmp / "engine.log"
        self.restarts = 0
        self.ledger: Store
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.exits.callback(self._forget_keys)

    # Start-up ---------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the engine's database, then start the receiver and the engine."""
        if self.engine == "procrastinate":
            dsn = ensure_postgres()
            import psycopg

            database = f"gptimg_t_engine_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            self.exits.callback(self._drop_database, dsn, database)
            self.env["GPTIMG_TEST_PG_DSN"] = dsn.rsplit("/", 1)[0] + "/" + database
            # The PostgreSQL ledger, in procrastinate's database: a job and its record
            # commit in one transaction.
            self.env["GPTIMG_TEST_LEDGER"] = self.env["GPTIMG_TEST_PG_DSN"] + "?table=t_ledger"
            self._run([str(BIN / "procrastinate"), "--app", self.app_path, "schema", "--apply"])
        elif self.engine == "django_tasks":
            self.env["DJANGO_SETTINGS_MODULE"] = "tests.dispatch.dj_settings"
            self.env["GPTIMG_TEST_DJ_DB"] = str(self.tmp / "tasks.sqlite3")
            self._run([sys.executable, "-m", "django", "migrate", "-v", "0"])
        url = self.env.get("GPTIMG_TEST_LEDGER") or f"{self.env['GPTIMG_TEST_REDIS']}"
        if "GPTIMG_TEST_LEDGER" not in self.env:
            url += f"?prefix={self.prefix}"
        self.ledger = open_store(url)
        self.exits.callback(self.ledger.close)
        port = free_port()
        self.base = self.exits.enter_context(
            running(
                uvicorn_argv("tests.dispatch.engine_app:app", port),
                port=port,
                env=self.environ(GPTIMG_TEST_ROLE="server"),
            )
        )
        # Stopped first at the end (callbacks run last in, first out): before the server,
        # the ledger and the database they use.
        self.exits.callback(self._stop)
        for name in self.argvs():
            self._spawn(name)
        threading.Thread(target=self._supervise, name=f"supervise-{self.engine}").start()

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

    def _run(self, argv: list[str]) -> str:
        done = subprocess.run(argv, cwd=ROOT, env=self.environ(), capture_output=True, timeout=120)
        out = done.stdout.decode() + done.stderr.decode()
        assert done.returncode == 0, out
        return out

    def argvs(self) -> dict[str, list[str]]:
        """Return the engine's long-running processes by name."""
        if self.engine == "celery":
            worker = [str(BIN / "celery"), "--app", self.app_path]
            return {
                "worker": [
                    *worker,
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
                ],
                "beat": [
                    *worker,
                    "beat",
                    "--schedule",
                    str(self.tmp / "beat-schedule"),
                    "--pidfile",
                    str(self.tmp / "beat.pid"),
                    "--max-interval",
                    "1",
                    "--loglevel",
                    "INFO",
                ],
            }
        if self.engine == "procrastinate":
            return {
                "worker": [
                    str(BIN / "procrastinate"),
                    "--app",
                    self.app_path,
                    "worker",
                    "--concurrency",
                    "4",
                    # Retries are scheduled jobs: look for due ones often, not every 5 s.
                    "--fetch-job-polling-interval",
                    "0.5",
                    "--wait",
                ]
            }
        db_worker = [sys.executable, "-m", "django", "db_worker", "--interval", "0.05"]
        return {
            f"worker{n}": [*db_worker, "--no-startup-delay", "--worker-id", f"w{n}"]
            for n in range(2)
        }

    def _spawn(self, name: str) -> None:
        with self.log.open("ab") as log:
            self.procs[name] = subprocess.Popen(
                self.argvs()[name],
                cwd=ROOT,
                env=self.environ(GPTIMG_TEST_ROLE="worker"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _supervise(self) -> None:
        """Restart a process that died (a SIGKILL takes a whole single-process worker)."""
        while not self._stopping.wait(0.1):
            with self._lock:
                for name, proc in list(self.procs.items()):
                    if proc.poll() is not None and not self._stopping.is_set():
                        self.restarts += 1
                        self._spawn(name)

    def _stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for proc in self.procs.values():
                # The scenarios are over: nothing to finish gracefully.
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _forget_keys(self) -> None:
        names = list(self.redis.scan_iter(match=f"{self.prefix}*", count=1000))
        for start in range(0, len(names), 500):
            self.redis.delete(*names[start : start + 500])
        self.redis.close()

    # Probes ----------------------------------------------------------------------------

    def post(self, client: httpx.Client, delivery: SignedDelivery) -> httpx.Response:
        return client.post(
            self.base + "/hooks/gptimg", content=delivery.body, headers=delivery.headers
        )

    def effects(self) -> Counter[str]:
        raw = self.redis.lrange(f"{self.prefix}effects", 0, -1)
        return Counter(value.decode() for value in raw)

    def effect_count(self) -> int:
        return int(self.redis.llen(f"{self.prefix}effects"))

    def state(self, key: str) -> str | None:
        record = self.ledger.get(key)
        return record.state.value if record is not None else None

    def attempts(self, key: str) -> int:
        record = self.ledger.get(key)
        return record.attempts if record is not None else 0

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{self.engine}: timed out waiting for {what}\n{tail}")


# Scenarios: each runs in a thread of its own, alongside the others (the kill after the load)


def load(engine: Stack) -> list[str]:
    """Send LOAD deliveries, a tenth retried and a tenth replayed under a forged fresh id."""
    originals = [signed(events.succeeded(), engine.secret) for _ in range(LOAD)]
    copies = [*originals[::10], *(d.forged() for d in originals[5::10])]
    answers: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
    with httpx.Client(timeout=30, limits=limits) as client, ThreadPoolExecutor(SENDERS) as pool:
        for response in pool.map(lambda d: engine.post(client, d), originals):
            assert response.status_code == 202, response.text
            answers[response.json()["status"]] += 1
        for response in pool.map(lambda d: engine.post(client, d), copies):
            assert response.status_code in (200, 202), response.text
            answers[response.json()["status"]] += 1
    assert answers["queued"] >= LOAD
    wanted = [_generation(d) for d in originals]
    engine.wait_for(
        lambda: engine.effect_count() >= LOAD and set(wanted) <= engine.effects().keys(),
        f"{LOAD} effects",
    )
    time.sleep(1.0)  # room for any wrong second run to show up
    effects = engine.effects()
    assert Counter({g: effects[g] for g in wanted}) == Counter(wanted)
    assert {engine.state(_key(d)) for d in originals} == {"done"}
    return wanted


def killed(engine: Stack) -> list[str]:
    """A handler SIGKILLs its task process on the first attempt."""
    generation = f"kill_{uuid.uuid4().hex[:10]}"
    delivery = signed(events.succeeded(generation_id=generation), engine.secret)
    restarts = engine.restarts
    with httpx.Client(timeout=30) as client:
        assert engine.post(client, delivery).json() == {"ok": True, "status": "queued"}
    key = _key(delivery)
    engine.wait_for(lambda: engine.state(key) == "done", "the killed record to be done")
    time.sleep(1.0)
    assert engine.effects()[generation] == 1
    # The first run died in its handler: the second one completed it.
    assert engine.attempts(key) == 2
    if engine.engine != "celery":  # prefork replaces a child; the others die whole
        assert engine.restarts > restarts
    return [generation]


def failing(engine: Stack) -> list[str]:
    """A handler fails until healed: retried, then dead, then replayed and done once."""
    generation = f"fail_{uuid.uuid4().hex[:10]}"
    delivery = signed(events.succeeded(generation_id=generation), engine.secret)
    key = _key(delivery)
    with httpx.Client(timeout=30) as client:
        assert engine.post(client, delivery).json()["status"] == "queued"
        engine.wait_for(lambda: engine.state(key) == "dead", "the failing record to be dead")
        assert engine.attempts(key) == 3  # the receiver's Backoff(max_attempts=3)
        assert engine.effects()[generation] == 0
        # A duplicate of a dead delivery does not run it again by itself.
        assert engine.post(client, delivery).json()["status"] == "dead"
        engine.redis.set(f"{engine.prefix}heal", "1")
        assert client.post(f"{engine.base}/replay/{key}").json() == {"replayed": True}
    engine.wait_for(lambda: engine.state(key) == "done", "the replayed record to be done")
    time.sleep(0.5)
    assert engine.effects()[generation] == 1
    return [generation]


def lost(engine: Stack) -> list[str]:
    """A record pending in the ledger whose task was never enqueued is run once."""
    generation = f"lost_{uuid.uuid4().hex[:10]}"
    delivery = signed(events.succeeded(generation_id=generation), engine.secret)
    key = _key(delivery)
    entry = Entry(key, delivery.delivery_id, "generation.succeeded", generation, delivery.body)
    # What a crash between the ledger's commit and the enqueue leaves behind.
    assert engine.ledger.enqueue(entry).queued
    if engine.engine == "django_tasks":
        # Cron's line: no grace here, so the command (not the keeper) finds the record.
        out = engine._run(
            [
                sys.executable,
                "-m",
                "django",
                "gptimg_webhooks_sweep",
                "--hooks",
                "tests.dispatch.engine_app:hooks",
                "--grace",
                "0s",
            ]
        )
        assert key in out.split(), out
    engine.wait_for(lambda: engine.state(key) == "done", "the lost record to be run")
    time.sleep(0.5)
    assert engine.effects()[generation] == 1
    return [generation]


SCENARIOS: dict[str, Callable[[Stack], list[str]]] = {
    "load": load,
    "killed": killed,
    "failing": failing,
    "lost": lost,
}


class Runs:
    """Every engine's stack and the futures of its scenarios."""

    def __init__(self, stacks: dict[str, Stack]) -> None:
        self.stacks = stacks
        self.futures: dict[tuple[str, str], Future[list[str]]] = {}

    def outcome(self, engine: str, name: str) -> list[str]:
        """Wait for a scenario; its failure (an AssertionError) is raised here."""
        return self.futures[engine, name].result(timeout=4 * WAIT)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[Runs]:
    """Start the selected tests' engines, run every scenario on each at once."""
    selected = {
        item.callspec.params["engine"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    engines = [engine for engine in NAMES if engine in selected]
    modules = {"celery": "celery", "procrastinate": "procrastinate"}
    for engine in engines:
        _module(modules.get(engine, "django_tasks_db"))
    redis_url = ensure_redis()
    if "procrastinate" in engines:
        ensure_postgres()
    found = Runs({engine: Stack(engine, redis_url) for engine in engines})
    with ExitStack() as exits, ThreadPoolExecutor(len(engines) * (1 + len(SCENARIOS))) as pool:
        for stack in found.stacks.values():
            exits.push(stack.exits)
        started = {engine: pool.submit(stack.start) for engine, stack in found.stacks.items()}

        def scenario(engine: str, name: str, run: Callable[[Stack], list[str]]) -> list[str]:
            started[engine].result()
            if name == "killed":
                # A SIGKILL ends every run in flight in that process, and one whose effect
                # (a Redis push, outside the ledger's transaction) was made but not yet
                # marked done runs again after its lease: at least once, by design. So
                # the process dies only once the load is through.
                found.futures[engine, "load"].exception()
            return run(found.stacks[engine])

        for engine in engines:
            for name, run in SCENARIOS.items():
                found.futures[engine, name] = pool.submit(scenario, engine, name, run)
        yield found
        for future in found.futures.values():  # stop the engines once every scenario ended
            future.exception()


@pytest.mark.parametrize("engine", ENGINES)
def test_deliveries_duplicates_and_forged_replays_take_effect_exactly_once(
    runs: Runs, engine: str
) -> None:
    assert len(runs.outcome(engine, "load")) == LOAD


@pytest.mark.parametrize("engine", ENGINES)
def test_a_task_process_sigkilled_mid_handler_is_completed_once_later(
    runs: Runs, engine: str
) -> None:
    runs.outcome(engine, "killed")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failing_handler_is_retried_then_kept_dead_and_replayable(
    runs: Runs, engine: str
) -> None:
    runs.outcome(engine, "failing")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_lost_pointer_is_dispatched_again_by_the_engines_scheduler(
    runs: Runs, engine: str
) -> None:
    # Celery beat and procrastinate's periodic task alone (the receivers' sweep is off);
    # for Django's task framework, the management command run as cron runs it.
    runs.outcome(engine, "lost")


@pytest.mark.parametrize("engine", ENGINES)
def test_at_the_end_every_effect_exists_exactly_once_and_every_record_is_done(
    runs: Runs, engine: str
) -> None:
    sent = [g for name in SCENARIOS for g in runs.outcome(engine, name)]
    stack = runs.stacks[engine]
    assert stack.effects() == Counter(sent)
    records = stack.ledger.records(limit=2 * LOAD)
    assert len(records) == len(sent)
    assert {r.state for r in records} == {State.DONE}
