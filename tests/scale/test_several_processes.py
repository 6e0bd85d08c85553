"""Several processes, one store: exactly-once effects under load, crashes and outages.

For Redis and for PostgreSQL: 4 uvicorn receiver workers in deferred mode and 2
standalone ``gptimg-webhooks worker`` processes; a worker SIGKILLed mid-handler; the
store cut off during a burst. The handler appends to a table without a unique
constraint, so a second run of any handler is a second row.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from gptimg_webhooks import Webhooks, sign
from gptimg_webhooks._core.ledger import State
from tests.scale.conftest import (
    APP,
    SECRET,
    Backend,
    PrivateRedis,
    deliveries,
    drop,
    postgres_backend,
    redis_backend,
    send,
    spawned,
    wait_for,
    worker_argv,
)
from tests.support.contract import payload
from tests.support.proxy import Proxy
from tests.support.servers import free_port, running, uvicorn_argv
from tests.support.services import ensure_postgres, unavailable

pytestmark = pytest.mark.slow

GENERATIONS = 2000
FLAKY_EVERY = 50  # 1 in 50 fails on its first run: the workers' own retries


def _drained(backend: Backend, expected: int) -> bool:
    states = backend.states()
    return states[State.DONE] >= expected and not (
        states[State.PENDING] or states[State.PROCESSING]
    )


def test_four_receivers_and_two_workers_run_every_generation_once(backend: Backend) -> None:
    started = time.monotonic()
    port = free_port()
    env = backend.env(GPTIMG_TEST_MODE="deferred")
    options = ("--concurrency", "8", "--poll-interval", "0.1", "--retry-delay", "0.2")
    ids = [f"gen_flaky_{i}" if i % FLAKY_EVERY == 0 else f"gen_{i}" for i in range(GENERATIONS)]
    groups = [deliveries(g, duplicates=True) for g in ids]

    with (
        running(uvicorn_argv(f"{APP}:app", port, workers=4), port=port, env=env, ready_path="/"),
        spawned(worker_argv(*options), env) as w1,
        spawned(worker_argv(*options), env) as w2,
    ):
        report = asyncio.run(send(port, groups))
        sent = time.monotonic()
        wait_for(lambda: _drained(backend, GENERATIONS), 40, "the workers to drain the queue")
        drained = time.monotonic()
        assert w1.stop() == 0, w1.output()
        assert w2.stop() == 0, w2.output()

    statuses = report.statuses()
    # Deferred mode: queued, or a duplicate of a done record; never a failure.
    assert set(statuses) <= {200, 202, 409, 503}, statuses
    assert report.given_up == []
    assert report.acknowledged == set(ids)
    effects = backend.effects()
    twice = {g: n for g, n in effects.items() if n != 1}
    assert twice == {}, f"{len(twice)} generations ran more than once"
    assert set(effects) == set(ids)  # every acknowledged delivery has its effect
    states = backend.states()
    assert states == {State.DONE: GENERATIONS}, states
    flaky_runs = [r for r in backend.rows() if r[0].startswith("gen_flaky_") and r[4] == "start"]
    assert len(flaky_runs) == 2 * len(ids[::FLAKY_EVERY])  # failed once, retried once
    print(
        f"\n{backend.name}: {sum(statuses.values())} requests {dict(statuses)} in "
        f"{sent - started:.1f}s incl. start-up; drained {drained - sent:.1f}s later"
    )


def test_worker_killed_mid_handler_is_taken_over_after_its_lease(backend: Backend) -> None:
    lease = 2.0
    env = backend.env(GPTIMG_TEST_SLOW="1.5", GPTIMG_TEST_LEASE=str(lease))
    options = ("--concurrency", "1", "--poll-interval", "0.1", "--lease", str(lease))
    hooks = Webhooks(SECRET, store=backend.store_url, mode="deferred", include_shared=False)
    body = payload("gen_slow_killed")
    headers = {
        "X-Gptimg-Signature": sign(body, SECRET),
        "X-Gptimg-Delivery": "7d1f4a55-7b43-4c1e-9d0e-2f7b3a1c9e11",
        "X-Gptimg-Event": "generation.succeeded",
    }
    assert hooks.handle("POST", headers, body).status == 202
    hooks.close()

    with spawned(worker_argv(*options), env) as first:
        wait_for(lambda: any(r[4] == "start" for r in backend.rows()), 20, "the first run")
        first.stop(signal.SIGKILL)
        killed = time.time()
        with spawned(worker_argv(*options), env) as second:
            wait_for(lambda: backend.effects(), 20, "the takeover to finish")
            wait_for(lambda: _drained(backend, 1), 10, "the record to be done")
            assert second.stop() == 0, second.output()

    rows = backend.rows()
    starts = sorted((r[2], r[3]) for r in rows if r[4] == "start")
    effects = [(r[2], r[3], r[5]) for r in rows if r[4] == "effect"]
    assert starts == [(1, first.pid), (2, second.pid)]
    assert len(effects) == 1  # completed exactly once...
    attempt, pid, at = effects[0]
    assert (attempt, pid) == (2, second.pid)  # ...by the other worker...
    first_start = next(r[5] for r in rows if r[4] == "start" and r[3] == first.pid)
    assert at >= first_start + lease  # ...once the dead worker's lease had expired
    assert killed < at
    assert backend.states() == {State.DONE: 1}


# Store outage --------------------------------------------------------------------------

BURST = 300
RATE = 75.0  # groups per second: the burst lasts 4 s
DOWN_AT, UP_AT = 1.0, 3.0  # seconds into the burst


def _unusual(log: str) -> str:
    """Keep the lines of a worker's log that are not a routine success."""
    return "\n".join(line for line in log.splitlines() if ": processed" not in line)[-6000:]


def _outage_run(backend: Backend, stop: object, start: object) -> None:
    """Send a burst, stop the store during it, and check what the sender saw."""
    port = free_port()
    env = backend.env(GPTIMG_TEST_MODE="deferred", GPTIMG_TEST_LEASE="10")
    options = ("--concurrency", "4", "--poll-interval", "0.1", "--retry-delay", "0.2")
    ids = [f"gen_burst_{i}" for i in range(BURST)]
    window: dict[str, float] = {}

    async def burst() -> object:
        async def outage() -> None:
            begin = time.monotonic()
            await asyncio.sleep(DOWN_AT)
            await asyncio.to_thread(stop)  # type: ignore[arg-type]
            window["down"] = time.monotonic()
            await asyncio.sleep(UP_AT - (time.monotonic() - begin))
            window["restoring"] = time.monotonic()
            await asyncio.to_thread(start)  # type: ignore[arg-type]
            window["up"] = time.monotonic()

        groups = [deliveries(g, duplicates=False) for g in ids]
        sending = send(port, groups, rate=RATE)
        report, _ = await asyncio.gather(sending, outage())
        return report

    with (
        running(uvicorn_argv(f"{APP}:app", port, workers=2), port=port, env=env, ready_path="/"),
        spawned(worker_argv(*options), env) as worker,
    ):
        report = asyncio.run(burst())
        wait_for(
            lambda: _drained(backend, BURST),
            30,
            "the queue to drain after the outage",
            detail=lambda: f"{backend.states()}\n--- worker ---\n{_unusual(worker.output())}",
        )
        assert worker.stop() == 0, worker.output()

    answers = report.answers  # type: ignore[attr-defined]
    during = [
        a for a in answers if a.sent > window["down"] + 0.05 and a.answered < window["restoring"]
    ]
    assert during, "no delivery was sent while the store was down"
    assert {a.status for a in during} == {503}
    assert all(a.answered - a.sent < 4.5 for a in answers)  # inside the provider's 5 s
    assert {a.status for a in answers} <= {200, 202, 503}
    # A 503 whose enqueue committed as the store went away is ambiguous to the sender;
    # its retry then finds the record, done by then: 200 duplicate, and only then.
    for late in (a for a in answers if a.status == 200):
        assert any(
            a.generation_id == late.generation_id and a.status == 503 and a.sent < late.sent
            for a in answers
        ), late
    assert report.given_up == []  # type: ignore[attr-defined]
    effects = backend.effects()
    assert effects == {g: 1 for g in ids}  # each event ran once, nothing lost
    assert backend.states() == {State.DONE: BURST}
    print(f"\n{backend.name} outage: {len(during)} answers while down, all 503")


def test_redis_outage_during_a_burst_answers_503_then_loses_nothing(tmp_path: Path) -> None:
    if not shutil.which("redis-server"):
        unavailable("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    backend = redis_backend(uuid.uuid4().hex[:10], url=server.url)
    try:
        _outage_run(backend, server.kill, server.start)
    finally:
        server.kill()
        drop(backend)


def test_postgres_outage_during_a_burst_answers_503_then_loses_nothing(tmp_path: Path) -> None:
    dsn = ensure_postgres()
    with Proxy(5432) as proxy:
        tag = f"outage_{time.monotonic_ns() % 10**9}"
        proxied = dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        backend = postgres_backend(tag, dsn=proxied)
        # Effects (and the test's own reads) go straight to PostgreSQL, not through
        # the proxy; the handler's transactional effect rows go with the ledger.
        backend.effects_url = dsn
        try:
            _outage_run(backend, proxy.cut, proxy.restore)
        finally:
            proxy.restore()
            drop(backend)
