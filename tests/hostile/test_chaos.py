"""Faults under real servers: killed workers, a store cut mid-burst, handlers that hang.

The provider is played by :class:`~gptimg_webhooks.testing.Simulator` (its real 5 s timeout,
its retry schedule sped up 60x). After its retries and the library's own recovery (the
recovery sweep inline, the workers in deferred mode, late done marks after an outage),
every verified delivery must have run exactly once, no record may be left in progress,
the endpoint must never have been disabled, and every answer given during the fault must
be a documented one.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gptimg_webhooks._core.errors import StoreUnavailable
from gptimg_webhooks._core.ledger import State
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.testing import Clock, Report, Simulator, events, signed
from tests.hostile.examples import example_env, serve
from tests.hostile.load import store_url
from tests.support.proxy import Proxy
from tests.support.servers import ROOT, Server
from tests.support.services import ensure_postgres, ensure_redis

pytestmark = pytest.mark.slow

SECRET = "whsec_hostile_chaos_secret"
PATH = "/hooks/gptimg"
#: Statuses the contract documents for a verified delivery during a fault; None is a
#: dropped connection (a worker killed under it).
DOCUMENTED = {200, 202, 409, 503, None}
SPEEDUP = 60.0  # retries after 0.5 s, 2 s and 10 s of real time


def wait_for(what: str, done: Callable[[], bool], seconds: float = 40.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def runs(base: str, gid: str) -> int:
    rows = httpx.get(base + "/generations", timeout=30).json()
    return Counter(r["generationId"] for r in rows)[gid]


def state(store: str, body: bytes) -> State | None:
    try:
        record = open_store(store, create=False).get(hashlib.sha256(body).hexdigest())
    except StoreUnavailable:  # a SQLite ledger not created yet
        return None
    return None if record is None else record.state


def in_progress(store: str) -> int:
    try:
        return len(open_store(store, create=False).records(State.PROCESSING, limit=1000))
    except StoreUnavailable:  # its tables not created yet
        return -1


def assert_documented(reports: list[Report]) -> None:
    for report in reports:
        for attempt in report.attempts:
            assert attempt.status in DOCUMENTED, attempt.describe()
            assert attempt.latency < 5.5, attempt.describe()


def workers_of(server: Server) -> list[int]:
    return [pid for pid in server.pids() if pid != server.proc.pid]


@contextmanager
def provider_in_background(sim: Simulator, sample: Any) -> Iterator[list[Report]]:
    """Deliver ``sample`` with the whole retry schedule while the block plays the fault."""
    reports: list[Report] = []
    thread = threading.Thread(target=lambda: reports.append(sim.deliver(sample)), daemon=True)
    thread.start()
    yield reports
    thread.join(60)
    assert not thread.is_alive(), "the provider's schedule did not end"


@pytest.mark.parametrize("adapter", ["flask-gunicorn", "starlette-uvicorn"])
def test_a_worker_killed_mid_handler_is_recovered_by_the_sweep_exactly_once(
    adapter: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    options = {"lease": 3, "sweep_interval": 1}
    with serve(adapter, tmp_path, [SECRET], store, options=options, workers=2) as server:
        gid = f"gen_slow_kill_{uuid.uuid4().hex[:8]}"  # the handler takes 1.5 s
        sample = signed(events.succeeded(generation_id=gid), SECRET)
        with Simulator(server.base + PATH, SECRET, clock=Clock(SPEEDUP)) as sim:
            with provider_in_background(sim, sample) as reports:
                wait_for("the handler to start", lambda: state(store, sample.body) is not None)
                assert state(store, sample.body) == State.PROCESSING
                for pid in workers_of(server):
                    os.kill(pid, signal.SIGKILL)  # mid-handler: nothing recorded as done
            wait_for("the sweep to run it", lambda: state(store, sample.body) == State.DONE)
            assert runs(server.base, gid) == 1
            assert in_progress(store) == 0
            assert not sim.disabled
            assert_documented(reports)
            assert reports[0].attempts[0].status is None  # the killed attempt: no answer


def test_a_standalone_worker_killed_mid_handler_is_taken_over_exactly_once(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    options = {"mode": "deferred", "lease": 3}
    env = {**os.environ, **example_env(tmp_path, [SECRET], store, options)}
    env["PYTHONPATH"] = str(ROOT)
    argv = [
        str(Path(sys.executable).parent / "gptimg-webhooks"),
        "worker",
        "--app",
        "examples.starlette_app.app:hooks",
        "--lease",
        "3",
        "--poll-interval",
        "0.2",
    ]

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    with serve("starlette-uvicorn", tmp_path, [SECRET], store, options=options) as server:
        gid = f"gen_slow_worker_{uuid.uuid4().hex[:8]}"
        sample = signed(events.succeeded(generation_id=gid), SECRET)
        with Simulator(server.base + PATH, SECRET, clock=Clock(SPEEDUP)) as sim:
            report = sim.deliver(sample)
            assert (report.attempts[0].status, report.attempts[0].answer) == (202, "queued")
            first = start_worker()
            try:
                wait_for(
                    "the worker to lease it", lambda: state(store, sample.body) == State.PROCESSING
                )
                os.killpg(first.pid, signal.SIGKILL)
                first.wait(10)
                assert runs(server.base, gid) == 0
                second = start_worker()
                try:
                    wait_for("the takeover", lambda: state(store, sample.body) == State.DONE)
                finally:
                    os.killpg(second.pid, signal.SIGTERM)
                    second.wait(15)
            finally:
                if first.poll() is None:
                    os.killpg(first.pid, signal.SIGKILL)
            assert runs(server.base, gid) == 1
            assert in_progress(store) == 0
            assert not sim.disabled


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_a_store_cut_during_a_burst_loses_nothing_and_runs_nothing_twice(
    kind: str, tmp_path: Path
) -> None:
    url = ensure_redis() if kind == "redis" else ensure_postgres()
    port = urlsplit(url).port or (6379 if kind == "redis" else 5432)
    proxy = Proxy(port)
    proxy.start()
    try:
        with store_url(kind, tmp_path) as direct:
            through_proxy = direct.replace(f":{port}/", f":{proxy.port}/")
            with serve("starlette-uvicorn", tmp_path, [SECRET], through_proxy, workers=2) as server:
                tag = uuid.uuid4().hex[:8]
                # A wave whose handlers (1.5 s) are running when the store goes, and a
                # wave that arrives while it is gone.
                # 7 in all, fewer than the provider's 8: while the ledger is down nothing can
                # be recorded, so each arrival is a 503 it counts, and with PostgreSQL so is
                # each handler whose done mark cannot commit (see SECURITY.md).
                running = [events.succeeded(generation_id=f"gen_slow_{tag}_{i}") for i in range(3)]
                arriving = [events.succeeded(generation_id=f"gen_cut_{tag}_{i}") for i in range(4)]
                # A 4 s outage (longer than the stores' own reconnect retries) against the
                # provider's schedule 5x faster: its first retry comes 6 s later.
                with Simulator(server.base + PATH, SECRET, clock=Clock(5)) as sim:
                    first: list[Report] = []
                    second: list[Report] = []
                    waves = [
                        threading.Thread(
                            target=lambda w=wave, out=out: out.extend(sim.concurrent(w)),
                            daemon=True,
                        )
                        for wave, out in ((running, first), (arriving, second))
                    ]
                    waves[0].start()
                    wait_for("the first wave's handlers", lambda: in_progress(direct) == 3, 20)
                    proxy.cut()
                    waves[1].start()
                    time.sleep(4.0)
                    proxy.restore()
                    for wave_thread in waves:
                        wave_thread.join(60)
                        assert not wave_thread.is_alive()
                    assert not sim.disabled
                reports = first + second
                assert_documented(reports)
                statuses = Counter(a.status for r in reports for a in r.attempts)
                print(f"{kind}: answers during the burst {dict(statuses)}")
                assert statuses[503] > 0, "the outage was not seen: the test proves nothing"
                for sample in running + arriving:
                    gid = sample.generation_id or ""
                    wait_for("every delivery run", lambda gid=gid: runs(server.base, gid) >= 1, 30)
                wait_for("late done marks", lambda: in_progress(direct) == 0, 30)
                for sample in arriving:
                    assert runs(server.base, sample.generation_id or "") == 1, sample
                for sample, report in zip(running, first, strict=True):
                    # PostgreSQL is transactional: a done mark that cannot commit rolls back
                    # with the handler's writes through delivery.transaction and answers 503,
                    # so the provider's retry runs the handler again. The example's gallery is
                    # its own SQLite file, outside that transaction: it shows that second run.
                    again = kind == "postgres" and report.attempts[0].status == 503
                    assert runs(server.base, sample.generation_id or "") == 1 + again, report
                assert all(r.delivered for r in reports), [r.attempts for r in reports]
    finally:
        proxy.cut()


def test_handlers_that_hang_past_the_providers_timeout_are_answered_in_time_and_run_once(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with serve("starlette-uvicorn", tmp_path, [SECRET], store, workers=2) as server:
        tag = uuid.uuid4().hex[:8]
        samples = [events.succeeded(generation_id=f"gen_stall_{tag}_{i}") for i in range(4)]
        # 5x faster only: the provider's first retry (30 s) comes after the 6 s handler ended,
        # as it would in real time; 60x would retry into the running handler (409s).
        with Simulator(server.base + PATH, SECRET, clock=Clock(5)) as sim:
            reports = sim.concurrent(samples)
            assert not sim.disabled
        assert_documented(reports)
        for report in reports:
            assert report.delivered
            first = report.attempts[0]
            # 202 at the 3.5 s reply deadline; on a machine too loaded to send even that
            # within 5 s the provider times out, and its retry finds the delivery done.
            assert (first.status, first.answer) in ((202, "processing"), (None, None)), first
            if first.status is None:
                assert report.attempts[1].answer == "duplicate", report.attempts
        for sample in samples:
            gid = sample.generation_id or ""
            wait_for("the stalled handler", lambda gid=gid: runs(server.base, gid) == 1, 20)
        wait_for("nothing in progress", lambda: in_progress(store) == 0, 20)
        time.sleep(1.0)
        assert [runs(server.base, s.generation_id or "") for s in samples] == [1, 1, 1, 1]
