"""Fixtures for the multi-process proofs: backends, a provider-like sender, processes.

Every process runs on 127.0.0.1; the ledger is a real Redis or PostgreSQL (no mocks),
and the handler of ``tests.apps.effects_app`` appends to an effects table without a
unique constraint, so any second run of a handler is a second row.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gptimg_webhooks import sign
from gptimg_webhooks._core.ledger import State
from gptimg_webhooks.stores import open_store
from tests.support.contract import payload
from tests.support.servers import free_port
from tests.support.services import ensure_postgres, ensure_redis

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET = "whsec_scale_tests_5f0c1d2e3a4b"
APP = "tests.apps.effects_app"
#: The provider's retry delays (30 s, 2 min, 10 min), scaled down 1:60.
RETRY_DELAYS = (0.5, 2.0, 10.0)


# Backends ------------------------------------------------------------------------------


@dataclass
class Backend:
    """A shared ledger and the effects table the test app writes to."""

    name: str
    store_url: str
    effects_url: str
    table: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "GPTIMG_WEBHOOK_SECRET": SECRET,
            "GPTIMG_WEBHOOK_STORE": self.store_url,
            "GPTIMG_TEST_EFFECTS": self.effects_url,
            "GPTIMG_TEST_EFFECTS_TABLE": self.table,
            "PYTHONPATH": str(ROOT),
            **extra,
        }

    def rows(self) -> list[tuple[Any, ...]]:
        """Return every (generation_id, delivery_id, attempt, pid, phase, at) row."""
        import psycopg

        with psycopg.connect(self.effects_url) as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()
            if exists is None or exists[0] is None:
                return []
            return conn.execute(f"SELECT * FROM {self.table}").fetchall()

    def effects(self) -> Counter[str]:
        return Counter(r[0] for r in self.rows() if r[4] == "effect")

    def states(self) -> Counter[State]:
        store = open_store(self.store_url)
        try:
            return Counter(r.state for r in store.records(limit=100_000))
        finally:
            store.close()


def redis_backend(tag: str, url: str | None = None) -> Backend:
    postgres = ensure_postgres()
    base = url or ensure_redis()
    made = Backend("redis", f"{base}?prefix=gptimg-scale-{tag}:", postgres, f"effects_{tag}")
    return create(made)


def postgres_backend(tag: str, dsn: str | None = None) -> Backend:
    postgres = ensure_postgres()
    store = (dsn or postgres) + f"?table=scale_{tag}"
    return create(Backend("postgres", store, postgres, f"effects_{tag}"))


def create(backend: Backend) -> Backend:
    """Create the effects table before any process writes to it."""
    import psycopg

    with psycopg.connect(backend.effects_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {backend.table} (generation_id text, delivery_id text, "
            "attempt int, pid int, phase text, at double precision)"  # no unique constraint
        )
    return backend


def drop(backend: Backend) -> None:
    """Remove what a run left in the shared services."""
    import psycopg

    with psycopg.connect(backend.effects_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {backend.table}")
        if backend.name == "postgres":
            table = backend.store_url.rsplit("table=", 1)[1]
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_counters")
    if backend.name == "redis":
        import redis

        base, _, query = backend.store_url.partition("?prefix=")
        with contextlib.suppress(redis.exceptions.ConnectionError):
            client = redis.Redis.from_url(base)
            keys = list(client.scan_iter(match=f"{query}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


@pytest.fixture(params=["redis", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    tag = uuid.uuid4().hex[:10]
    made = redis_backend(tag) if request.param == "redis" else postgres_backend(tag)
    yield made
    drop(made)


# Processes ------------------------------------------------------------------------------


def worker_argv(*options: str) -> list[str]:
    """The standalone worker command: ``gptimg-webhooks worker ...``."""
    script = BIN / "gptimg-webhooks"
    probe = subprocess.run(
        [str(script), "worker", "--help"], capture_output=True, text=True, check=False
    )
    if probe.returncode == 0:
        return [str(script), "worker", "--app", f"{APP}:hooks", *options]
    # The command group does not import yet: the same click command, called directly.
    code = "from gptimg_webhooks.cli.worker import worker; worker()"
    return [sys.executable, "-c", code, "--app", f"{APP}:hooks", *options]


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Any

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            raise


@contextlib.contextmanager
def spawned(argv: Sequence[str], env: dict[str, str]) -> Iterator[Proc]:
    """Run ``argv`` for the block; stop it with SIGTERM at the end if it still runs."""
    with tempfile.TemporaryFile() as log:
        popen = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = Proc(popen, log)
        try:
            yield proc
        finally:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    proc.stop()


def wait_for(
    predicate: Any,
    timeout: float,
    what: str,
    interval: float = 0.1,
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate``; on timeout, fail with ``detail()`` (what the test can see)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


# The sender -----------------------------------------------------------------------------


@dataclass
class Answer:
    generation_id: str
    delivery_id: str
    status: int  # 0: no answer (connection error or the 5 s timeout)
    sent: float
    answered: float


@dataclass
class Report:
    answers: list[Answer] = field(default_factory=list)
    #: Generations for which at least one copy was acknowledged (2xx).
    acknowledged: set[str] = field(default_factory=set)
    #: Copies that exhausted the provider's retries without a 2xx.
    given_up: list[tuple[str, str]] = field(default_factory=list)

    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)


def deliveries(generation_id: str, duplicates: bool) -> list[tuple[str, bytes, str]]:
    """One delivery, plus (with ``duplicates``) a same-id copy and a forged fresh-id copy."""
    body = payload(generation_id)
    delivery_id = str(uuid.uuid4())
    copies = [(generation_id, body, delivery_id)]
    if duplicates:
        copies += [(generation_id, body, delivery_id), (generation_id, body, str(uuid.uuid4()))]
    return copies


class Client:
    """A small keep-alive HTTP/1.1 client: httpx costs more CPU than the servers under test.

    Up to ``connections`` requests are in flight; a request that fails or passes the
    provider's 5 s timeout answers status 0 and its connection is dropped.
    """

    def __init__(self, port: int, connections: int) -> None:
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(connections)

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> int:
        reader, writer = conn
        writer.write(request)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if not line:
                raise ConnectionError("connection closed mid-response")
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        return status

    async def _send(self, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
        conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            return (*conn, await self._exchange(conn, request))
        except BaseException:
            conn[1].close()
            raise

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
        """Return the status (0: no answer) and when the request went out."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        async with self._slots:
            sent = time.monotonic()
            try:
                reader, writer, status = await asyncio.wait_for(self._send(request), 5.0)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError):
                return 0, sent
            self._idle.append((reader, writer))
            return status, sent

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()


async def _deliver(
    client: Client,
    path: str,
    copy: tuple[str, bytes, str],
    report: Report,
    delays: Sequence[float],
) -> None:
    generation_id, body, delivery_id = copy
    headers = {
        "X-Gptimg-Signature": sign(body, SECRET),
        "X-Gptimg-Delivery": delivery_id,
        "X-Gptimg-Event": "generation.succeeded",
        "Content-Type": "application/json",
    }
    for delay in (0.0, *delays):
        await asyncio.sleep(delay)
        status, sent = await client.post(path, body, headers)
        report.answers.append(Answer(generation_id, delivery_id, status, sent, time.monotonic()))
        if 200 <= status < 300:
            report.acknowledged.add(generation_id)
            return
    report.given_up.append((generation_id, delivery_id))


async def send(
    port: int,
    groups: Sequence[Sequence[tuple[str, bytes, str]]],
    *,
    rate: float | None = None,
    delays: Sequence[float] = RETRY_DELAYS,
    connections: int = 32,
    path: str = "/hooks/gptimg",
) -> Report:
    """Deliver each group's copies together, retrying non-2xx like the provider.

    With ``rate`` groups start at that many per second (a burst spread over time);
    otherwise as fast as ``connections`` allow. ``Answer.sent`` is when a request got
    its turn, so waiting for a free connection does not count against the 5 s.
    """
    report = Report()
    client = Client(port, connections)
    tasks = []
    started = time.monotonic()
    for i, group in enumerate(groups):
        if rate is not None:
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        tasks.extend(
            asyncio.create_task(_deliver(client, path, copy, report, delays)) for copy in group
        )
    await asyncio.gather(*tasks)
    client.close()
    return report


# A private Redis server to stop and start again ----------------------------------------


class PrivateRedis:
    """A redis-server of our own on a free port, with an append-only file.

    The AOF is written before each reply, so killing the process loses nothing that was
    acknowledged: the test stops the server, not the data.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.RedisError:
                return False

        wait_for(up, 10, "redis-server to start", interval=0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
